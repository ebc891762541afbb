"""Hyperparameter sweeps: every point of `configs/sweeps/<name>.py` on top of a base config, each
in its own workdir, on this machine or a cluster; results.csv / results.md / results.png.

  python -m experiments.sweep --sweep=configs/sweeps/sft_lr_batch.py \
      --base=configs/sft.py:quickstart,steps=60 --workdir=/tmp/sweep --parallel=2
  python -m experiments.sweep ... --launcher=slurm --nodes=2 --gpus_per_node=8
  python -m experiments.sweep ... --launcher=skypilot --nodes=2 --accelerators=H100:8

Run the same command again to resume: finished points are skipped, running or submitted ones are
not started twice, failed ones run again.
"""

from absl import app, flags

from motif_jax.launch import driver

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file (exports get_sweep()).", required=True)
_BASE = flags.DEFINE_string("base", None, "Base config file[:variant].", required=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory.", required=True)
_EXPERIMENT = flags.DEFINE_string("experiment", "sft", "experiments.<name>, or a module path.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", list(driver.LAUNCHERS), "Where points run.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Points at once (local; Slurm array %N).")
_RESUBMIT = flags.DEFINE_bool("resubmit", False, "Submit points marked submitted again.")
_NODES = flags.DEFINE_integer("nodes", 1, "Hosts per point (slurm, skypilot).")
_GPUS = flags.DEFINE_integer("gpus_per_node", 0, "GPUs per host (slurm).")
_PARTITION = flags.DEFINE_string("slurm_partition", "", "Slurm partition.")
_TIMEOUT = flags.DEFINE_integer("timeout_min", 60, "Slurm time limit per point, minutes.")
_ACCELERATORS = flags.DEFINE_string("accelerators", "H100:8", "SkyPilot accelerators per host.")


def _engine_options():
  if _LAUNCHER.value == "slurm":
    from motif_jax.launch import slurm
    return slurm.SlurmOptions(nodes=_NODES.value, gpus_per_node=_GPUS.value,
                              partition=_PARTITION.value, timeout_min=_TIMEOUT.value,
                              parallel=_PARALLEL.value)
  if _LAUNCHER.value == "skypilot":
    from motif_jax.launch import skypilot
    return skypilot.SkyOptions(nodes=_NODES.value, accelerators=_ACCELERATORS.value)
  return None


def main(argv):
  del argv
  try:
    run = driver.SweepRun(sweep_file=_SWEEP.value, base=_BASE.value, workdir=_WORKDIR.value,
                          experiment=_EXPERIMENT.value, launcher=_LAUNCHER.value,
                          parallel=_PARALLEL.value, resubmit=_RESUBMIT.value)
    driver.run_sweep(run, engine_options=_engine_options())
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
