"""Section 3's run: the teacher probe (`motif_jax.probe.run_probe`) as one sweep point.

  python -m motif_jax.reproduce.probe_task --config=configs/reproduce.py:run=probe --workdir=DIR

Runs the probe in a comma-free directory beside the point (sweep point names hold commas, and
the probe passes a file under its workdir through the comma-separated `data.inputs`), linked
from DIR/probe_run, then copies its probe.json and probe.md into DIR. Rerunning resumes the
probe there (it skips finished candidates).
"""

import hashlib
import shutil
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/reproduce.py:run=probe",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Point directory.", required=True)


def run_dir(point_dir: Path) -> Path:
  """<phase dir>/runs/<hash of the point name>: no comma unless the study workdir has one."""
  return point_dir.parent / "runs" / hashlib.sha256(point_dir.name.encode()).hexdigest()[:12]


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from motif_jax.probe import run_probe  # noqa: PLC0415 (issue 19's probe)
  point_dir = Path(_WORKDIR.value).absolute()
  point_dir.mkdir(parents=True, exist_ok=True)
  target = run_dir(point_dir)
  if "," in str(target):
    raise SystemExit(f"error: the probe cannot run under a path with a comma: {target}")
  target.mkdir(parents=True, exist_ok=True)
  link = point_dir / "probe_run"
  if not link.exists():
    link.symlink_to(target, target_is_directory=True)
  run_probe(_CONFIG.value, str(target))
  for name in ("probe.json", "probe.md"):
    shutil.copyfile(target / name, point_dir / name)
  print(f"wrote {point_dir / 'probe.json'}")


if __name__ == "__main__":
  app.run(main)
