"""RL: pass-rate band bounds x clip-higher epsilon on the tiny model (recipe §5.1 ablations).

  python -m experiments.sweep --sweep=configs/sweeps/rl_band_clip.py \
      --base=configs/rl.py:quickstart --experiment=rl --workdir=/tmp/sweep_rl --parallel=2

Bands move as (low, high) pairs, from no filtering [0, 1] to the recipe's [0.1, 0.9] and a
narrower [0.2, 0.8]; eps_high from symmetric clipping (= eps_low, 0.2) to clip-higher 0.28 and
0.35. The table ranks points by held-out accuracy at the end of the run. (The `experiments.rl`
entry point comes with issue 18; until then this sweep is expansion-tested only.)
"""

from motif_jax.launch import sweep

BANDS = ((0.0, 1.0), (0.1, 0.9), (0.2, 0.8))  # (pass_rate_low, pass_rate_high)
EPS_HIGH = (0.2, 0.28, 0.35)


def get_sweep() -> sweep.Sweep:
  return sweep.Sweep(
      points=[{"rl.pass_rate_low": low, "rl.pass_rate_high": high, "rl.eps_high": eps}
              for low, high in BANDS for eps in EPS_HIGH],
      metric="eval/accuracy",  # held-out greedy accuracy at the end of the run
      goal="max",
      report=("eval/loss",),
  )
