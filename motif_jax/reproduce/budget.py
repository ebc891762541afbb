"""Equal token budgets, counted: the SFT steps a data pipeline needs to reach a token count, and
the tokens each finished run actually trained on (from its metrics.jsonl).

The count before launch runs the run's own Grain pipeline (the same config, curation, shuffle
seed and packing as `experiments.sft`, without the model) and sums `loss_mask` batch by batch:
the completion tokens `sft_step` reports as `train/tokens`. The curation of a condition does not
depend on the shuffle seed, so it is done once per condition and shared by its seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import ml_collections

from motif_jax.data import curate, pipeline
from motif_jax.data.config import DataConfig


@dataclasses.dataclass(frozen=True)
class Count:
  steps: int
  tokens: int  # completion tokens in the first `steps` batches (>= the budget)
  records: int  # training records after curation


def steps_for_budget(data: DataConfig, budget_tokens: int, *, max_steps: int,
                     records_cache: dict | None = None) -> Count:
  """Fewest batches of `data`'s pipeline whose completion tokens reach `budget_tokens`."""
  if budget_tokens < 1:
    raise ValueError(f"study token budget {budget_tokens} must be >= 1")
  key = json.dumps(dataclasses.asdict(dataclasses.replace(data, seed=0)), sort_keys=True,
                   default=str)
  cache = {} if records_cache is None else records_cache
  if key not in cache:
    cache[key] = pipeline.load_sft_records(data)[0]
  records = cache[key]
  ds = pipeline.build_sft_dataset(
      records, tokenizer=curate.make_tokenizer(data), template=data.template,
      seq_len=data.seq_len, global_batch_size=data.global_batch_size, seed=data.seed,
      shuffle=data.shuffle, num_epochs=data.num_epochs, packing_bins=data.packing_bins,
      process_index=0, process_count=1, workers=0, worker_buffer=data.worker_buffer,
      prefetch=1)
  it = iter(ds)
  tokens = steps = 0
  try:
    while tokens < budget_tokens:
      if steps == max_steps:
        raise ValueError(f"a token budget of {budget_tokens:,} needs more than study.max_steps="
                         f"{max_steps} steps of data.inputs={','.join(data.inputs)} "
                         f"({tokens:,} tokens in {steps} steps)")
      tokens += int(next(it)["loss_mask"].sum())
      steps += 1
  finally:
    it.close()
  return Count(steps=steps, tokens=tokens, records=len(records))


def data_config(config: ml_collections.ConfigDict) -> DataConfig:
  return DataConfig.from_config_dict(config.data)


def trained_tokens(metrics_file: Path) -> float:
  """Sum of `train/tokens` over the steps logged in `metrics_file` (a resumed run's repeated
  steps counted once, the last write wins); nan when nothing was logged."""
  per_step: dict[int, float] = {}
  try:
    lines = Path(metrics_file).read_text().splitlines()
  except FileNotFoundError:
    return math.nan
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a crash
    if "train/tokens" in record:
      per_step[int(record["step"])] = float(record["train/tokens"])
  return sum(per_step.values()) if per_step else math.nan
