"""Curate SFT traces: verify them and keep those that match the target model's style.

Reads `data.inputs` (JSONL / Parquet / ArrayRecord files, or the generated toy corpus), measures
the target style profile on `data.reference`, runs the filters in `data.filters.order` and writes
to the workdir: kept.jsonl, dropped.jsonl (with the filter and reason), style_profile.json,
report.json, report.md, hist_*.png and the resolved config.json (plus toy_reference.jsonl and
toy_heldout.jsonl when the toy corpus is used).

  python -m experiments.filter_data --config=configs/data.py --workdir=/tmp/motif_data
  python -m experiments.filter_data --config=configs/data.py:smoke --workdir=/tmp/motif_data_smoke \
      --config.data.inputs=my_traces.jsonl --config.data.reference=target_sample.jsonl
"""

import os

from absl import app, flags
from ml_collections import config_flags

from motif_jax.data import curate, report, toy_corpus
from motif_jax.data.config import DataConfig
from motif_jax.launch import distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/data.py", "Config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)


def main(argv):
  del argv
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  config = _CONFIG.value
  try:
    cfg = DataConfig.from_config_dict(config.data)
    curation = curate.curate(cfg)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  curate.save(workdir, curation)
  if any(spec in curate.TOY_INPUTS for spec in cfg.inputs):
    toy_corpus.save_splits(workdir, cfg.toy)
  summary = report.write_report(workdir, curation)
  print(f"{summary['records']} records ({summary['invalid']} invalid skipped): "
        f"{summary['kept']} kept, {summary['dropped']} dropped")
  print(f"{'filter':<12}{'seen':>7}{'kept':>7}  dropped by reason")
  for f in summary["filters"]:
    reasons = ", ".join(f"{r} {n}" for r, n in f["dropped"].items()) or "-"
    print(f"{f['name']:<12}{f['seen']:>7}{f['kept']:>7}  {reasons}")
  for source, row in summary["by_source"].items():
    print(f"  {source}: {row['input']} in, {row['kept']} kept, dropped by {row['dropped_by']}")
  print(f"wrote {workdir}/kept.jsonl and {workdir}/report.md")


if __name__ == "__main__":
  app.run(main)
