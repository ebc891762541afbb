"""Supervised fine-tuning (one stage of the curriculum); resumes from the workdir's checkpoints.

  python -m experiments.sft --config=configs/sft.py:stage1 --workdir=/tmp/sft1
  python -m experiments.sft --config=configs/sft.py:stage2 --workdir=/tmp/sft2 \
      --config.train.init_from=/tmp/sft1
  python -m experiments.sft --config=configs/sft.py:smoke --workdir=/tmp/sft_smoke

The workdir receives config.json, checkpoints/, metrics.jsonl, tensorboard/ and final/ (params).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from motif_jax import trainer
from motif_jax.launch import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  distributed.initialize()  # multi-host: --coordinator_address, JAX_* variables or Slurm
  try:
    summary = trainer.train(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:  # config and input errors name the field/file
    raise SystemExit(f"error: {e}") from None
  if not distributed.is_primary():
    return
  print(f"done: step {summary['step']}, {summary['tokens_per_s']:,.0f} training tokens/s, "
        f"outputs in {_WORKDIR.value}")
  for name, value in sorted(summary["eval"].items()):
    print(f"  {name}: {value:.4f}")


if __name__ == "__main__":
  app.run(main)
