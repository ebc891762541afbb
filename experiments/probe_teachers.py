"""Rank candidate teachers' trace sets against a student before scaling any of them.

  python -m experiments.probe_teachers --config=configs/probe.py:smoke --workdir=/tmp/probe_smoke
  python -m experiments.probe_teachers --config=configs/probe.py --workdir=/tmp/probe \
      --config.student=/tmp/my_model --config.candidates=a.jsonl,b.jsonl,c.jsonl \
      --config.eval_data=heldout.jsonl

Writes probe.json, probe.md, *_vs_probe.png and candidates/<name>/ to the workdir; rerun to
resume (finished candidates are skipped). See configs/probe.py and motif_jax/probe/.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from motif_jax.probe import run_probe

_CONFIG = config_flags.DEFINE_config_file("config", "configs/probe.py", "Config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save and restore at INFO
  try:
    out = run_probe(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:  # config and input errors name the field/file
    raise SystemExit(f"error: {e}") from None
  print("ranking by the SFT probe: " + " > ".join(out["ranking"]))
  print(f"wrote {_WORKDIR.value}/probe.json, probe.md ({out['seconds']:.0f} s)")


if __name__ == "__main__":
  app.run(main)
