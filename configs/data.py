"""Data alignment on the toy reasoning corpus: verify, filter to the target style, pack.

Generates the toy corpus (arith and lists problems, each rendered by an aligned and a misaligned
teacher), measures the target style on a reference sample, runs the filters (format, verify,
verbosity, granularity, style, dedup) and writes kept.jsonl, report.{json,md} and histograms.

  python -m experiments.filter_data --config=configs/data.py --workdir=/tmp/motif_data
  python -m experiments.filter_data --config=configs/data.py:smoke --workdir=/tmp/motif_data_smoke
  python -m experiments.bench_data --config=configs/data.py --out=/tmp/bench_data.json

Expected (CPU, a few seconds): of 2,496 toy records (1,200 problems x 2 teachers + 96
duplicates) about 1,200 are kept, all from the aligned teacher; the misaligned teacher loses
about 5% to format, 15% to verification and the rest to the style filter.
Own data: --config.data.inputs=a.jsonl,b.parquet --config.data.reference=target_sample.jsonl.

Variants: smoke (40 problems per domain, 256-token rows), verify_only (format + verify, no
style alignment: the "verified but misaligned" ablation), unfiltered (no filters at all).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, smoke=False, verify_only=False, unfiltered=False)
  config = ml_collections.ConfigDict()
  config.data = common.data()
  if args.smoke:
    config.data.toy.update(dict(problems=40, reference_size=20, heldout_per_difficulty=2))
    config.data.update(dict(seq_len=256, global_batch_size=4))
  if args.verify_only:
    config.data.filters.order = "format,verify"
  if args.unfiltered:
    config.data.filters.order = ""
  return config
