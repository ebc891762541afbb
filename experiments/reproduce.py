"""Reproduce the recipe's lessons at small scale and write a report a person can read.

  python -m experiments.reproduce --workdir=/tmp/repro                  # full study (~60 min)
  python -m experiments.reproduce --workdir=/tmp/repro_smoke --config=configs/reproduce.py:smoke
  python -m experiments.reproduce --workdir=/tmp/repro --config.study.parts=data,memory
  python -m experiments.reproduce --workdir=/shared/repro --launcher=slurm   # then rerun to collect

Runs every SFT / RL / memory run of the study through the sweep launcher (DIR/<phase>/), then
writes DIR/report.md, DIR/report.html (plots inline) and DIR/results.json. Resumable: run the
same command again; finished runs are reused, interrupted ones resume from their checkpoints.
"""

import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from motif_jax.launch import driver
from motif_jax.reproduce import run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/reproduce.py",
                                          "Study config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory.", required=True)
_LAUNCHER = flags.DEFINE_enum("launcher", "local", list(driver.LAUNCHERS), "Where runs go.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config_file, _, study_arg = flags.FLAGS["config"].config_filename.partition(":")
  try:
    run.reproduce(_CONFIG.value.study, config_file=config_file, study_arg=study_arg,
                  workdir=_WORKDIR.value, launcher=_LAUNCHER.value,
                  command=" ".join(["python -m experiments.reproduce", *map(shlex.quote,
                                                                             sys.argv[1:])]))
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
