"""RL after SFT: rollouts, pass-rate band, replay, balancing and rl_step (motif_jax/rl/trainer.py);
resumes from the workdir's checkpoints.

  python -m experiments.rl --config=configs/rl.py:quickstart --workdir=/tmp/rl \
      --config.rl.init_from=/tmp/sft
  python -m experiments.rl --config=configs/rl.py:smoke --workdir=/tmp/rl_smoke \
      --config.rl.init_from=/tmp/sft_smoke

The workdir receives config.json, checkpoints/ (train state + host state: prompt queue, replay
buffer, pass-rate statistics), metrics.jsonl, tensorboard/ and final/ (params).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from motif_jax.launch import distributed
from motif_jax.rl import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.", required=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  distributed.initialize()  # multi-host: --coordinator_address, JAX_* variables or Slurm
  try:
    summary = trainer.train(_CONFIG.value, _WORKDIR.value)
  except ValueError as e:  # config errors name the field
    raise SystemExit(f"error: {e}") from None
  if not distributed.is_primary():
    return
  rl = summary["rl"]
  print(f"done: rollout batch {summary['step']}, reward {rl.get('rl/reward', float('nan')):.3f}, "
        f"{summary['tokens_per_s']:,.0f} training tokens/s, outputs in {_WORKDIR.value}")
  for name, value in sorted(summary["eval"].items()):
    print(f"  {name}: {value:.4f}")


if __name__ == "__main__":
  app.run(main)
