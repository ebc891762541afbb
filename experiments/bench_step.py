"""Training-step benchmark: the jitted sft_step warm, its GFLOP/s, a matmul, and a breakdown.

  python -m experiments.bench_step --config=configs/bench_step.py:sbs --out=/tmp/step_sbs.json
  python -m experiments.bench_step --config=configs/bench_step.py:tiny --out=/tmp/step_tiny.json
  python -m experiments.bench_step --config=configs/bench_step.py:quickstart \
      --config.model.scan_layers=True --out=/tmp/step_qs_scan.json

Presets (sbs = the Tunix side-by-side shape, tiny, quickstart, smoke) are in
configs/bench_step.py; the measurement is motif_jax/bench/step.py. Not a test.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from motif_jax.bench import step
from motif_jax.launch import distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_step.py",
                                          "Config file[:preset].")
_OUT = flags.DEFINE_string("out", None, "JSON output path.", required=True)
_STEP = flags.DEFINE_string("step", "sft", f"Which step to time: {sorted(step.STEP_BUILDERS)}.")


def main(argv):
  del argv
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  try:
    result = step.run(_CONFIG.value, step=_STEP.value)
  except ValueError as e:  # config errors name the field
    raise SystemExit(f"error: {e}") from None
  print(step.table(result))
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2, default=str)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
