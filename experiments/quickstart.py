"""Quickstart: the data-alignment lesson and SFT, end to end on CPU in a few minutes.

  make quickstart            # = python -m experiments.quickstart --workdir=/tmp/motif_quickstart

1. Generates the toy reasoning corpus (arithmetic and list problems, each answered by an aligned
   and a misaligned teacher) and runs the alignment filters (format, verification, verbosity,
   step granularity, style profile, dedup): WORKDIR/data holds kept.jsonl and report.md.
2. Trains the tiny Motif-architecture model (grouped differential attention, PolyNorm) on the
   kept traces (configs/sft.py:quickstart): WORKDIR/sft holds checkpoints, metrics.jsonl,
   TensorBoard events and final params. Re-running resumes from the last checkpoint.
3. Prints held-out loss and greedy-decoding accuracy per domain and difficulty.
"""

import os
import time

from absl import app, flags, logging

from configs import sft as sft_config
from motif_jax import trainer
from motif_jax.data import curate, report, toy_corpus
from motif_jax.data.config import DataConfig
from motif_jax.launch import distributed

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/motif_quickstart", "Output directory.")
_STEPS = flags.DEFINE_integer("steps", 0, "Training steps (0 = the config's 200).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny corpus and a few steps (seconds; for tests).")


def main(argv):
  del argv
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  start = time.perf_counter()
  config = sft_config.get_config(f"{'smoke' if _SMOKE.value else 'quickstart'},"
                                 f"steps={_STEPS.value}")
  data_dir = os.path.join(_WORKDIR.value, "data")
  os.makedirs(data_dir, exist_ok=True)

  print("== 1/3 data: toy corpus from two teachers through the alignment filters")
  filter_config = config.data.to_dict()
  filter_config.update(inputs="toy", filter_on_load=True)
  curation = curate.curate(DataConfig.from_config_dict(filter_config))
  curate.save(data_dir, curation)
  toy_corpus.save_splits(data_dir, DataConfig.from_config_dict(filter_config).toy)
  summary = report.write_report(data_dir, curation)
  for source, row in summary["by_source"].items():
    print(f"  {source}: {row['input']} traces, {row['kept']} kept")
  print(f"  report: {data_dir}/report.md")

  print("== 2/3 SFT of the tiny Motif-architecture model on the kept traces")
  config.data.inputs = os.path.join(data_dir, "kept.jsonl")
  config.data.filter_on_load = False
  result = trainer.train(config, os.path.join(_WORKDIR.value, "sft"))

  print("== 3/3 held-out evaluation (greedy decoding)")
  for name, value in sorted(result["eval"].items()):
    print(f"  {name}: {value:.3f}")
  print(f"trained {result['step']} steps at {result['tokens_per_s']:,.0f} completion tokens/s; "
        f"total {time.perf_counter() - start:.0f}s; outputs in {_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main)
