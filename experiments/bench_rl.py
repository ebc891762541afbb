"""RL-step benchmark: rl_step vs sft_step on the same packed tokens, alternating rounds.

  python -m experiments.bench_rl --config=configs/bench_step.py:tiny --out=/tmp/bench_rl.json
  python -m experiments.bench_rl --config=configs/bench_step.py:smoke --rounds=2 --out=/tmp/s.json

The model, optimizer and batch shape come from a bench_step preset (configs/bench_step.py), the
RL objective from --rl_config (configs/rl.py's rl section; override with --rl_config.rl.X=...).
Prints min / median / max per-step times and the rl/sft ratio over rounds (the issue 18 target is
rl_step <= 1.2x sft_step); the measurement is motif_jax/bench/rl_step.py. Not a test.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from motif_jax.bench import rl_step
from motif_jax.rl.config import RLConfig

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_step.py:tiny",
                                          "bench_step preset: model, optim, bench shape.")
_RL_CONFIG = config_flags.DEFINE_config_file("rl_config", "configs/rl.py",
                                             "RL config whose rl section sets the objective.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating rounds (each side bench.steps steps).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 32, "Prompt tokens per packed trajectory.")
_OUT = flags.DEFINE_string("out", None, "JSON output path.", required=True)


def main(argv):
  del argv
  try:
    rl = RLConfig.from_config_dict(_RL_CONFIG.value.rl)
    result = rl_step.run(_CONFIG.value, rl, rounds=_ROUNDS.value, prompt_len=_PROMPT_LEN.value)
  except ValueError as e:  # config errors name the field
    raise SystemExit(f"error: {e}") from None
  print(rl_step.table(result))
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2, default=str)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
