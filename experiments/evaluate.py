"""Evaluate a checkpoint: sample n completions per prompt, score them, report pass@k and maj@n.

  python -m experiments.evaluate --config=configs/evaluate.py:smoke --workdir=/tmp/eval_smoke \
      --config.checkpoint=/tmp/sft_smoke
  python -m experiments.evaluate --config=configs/evaluate.py --workdir=/tmp/eval \
      --config.checkpoint=/tmp/sft1 --config.data=prompts.jsonl

Writes eval.json, eval.md, samples.jsonl and plots to the workdir; rerun to resume (see
configs/evaluate.py and motif_jax/eval_run.py).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from motif_jax import eval_run
from motif_jax.launch import distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/evaluate.py", "Config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  try:
    out = eval_run.run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:  # a missing checkpoint or data file, config errors
    raise SystemExit(f"error: {e}") from None
  overall = out["overall"]
  print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in overall.items()))
  print(f"wrote {_WORKDIR.value}/eval.json, eval.md, samples.jsonl")


if __name__ == "__main__":
  app.run(main)
