"""SFT learning rate x batch size on the tiny model: a 3 x 2 grid, warmup 10% of the steps.

  python -m experiments.sweep --sweep=configs/sweeps/sft_lr_batch.py \
      --base=configs/sft.py:quickstart,steps=40 --workdir=/tmp/sweep_sft --parallel=2

Each point is `experiments.sft` with `--config.optim.learning_rate`, `--config.train.batch_size`
(which moves `data.global_batch_size` with it) and the derived `--config.optim.warmup_steps`.
The table ranks points by the held-out loss at the end of the run.
"""

from motif_jax.launch import sweep


def get_sweep() -> sweep.Sweep:
  return sweep.Sweep(
      points=sweep.grid({
          "optim.learning_rate": [1e-3, 3e-3, 1e-2],  # peak
          "train.batch_size": [8, 16],  # global rows per step
      }),
      derived={
          # warmup as a fraction of the run, so it scales with --base's steps=N
          "optim.warmup_steps": lambda c: max(1, round(0.1 * c.train.num_steps)),
      },
      metric="eval/loss",  # held-out token loss at the end of the run
      goal="min",
      report=("loss/ce", "eval/accuracy"),
  )
