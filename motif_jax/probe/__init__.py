"""Teacher probe: rank candidate trace sets by how well they fit a student (issue 19).

`run_probe(config, workdir, *, log=print) -> dict` (what probe.json holds); see run.py.
"""

from motif_jax.probe.run import run_probe

__all__ = ["run_probe"]
