"""The SFT input pipeline on Grain: records -> shuffled, per-process shards -> packed batches.

What a trainer uses:

    data_cfg = DataConfig.from_config_dict(config.data)
    ds, curation = sft_dataset(data_cfg, process_index=jax.process_index(),
                               process_count=jax.process_count())
    it = iter(ds)
    batch = next(it)          # dict of int32 numpy arrays [global_batch_size / processes, seq_len]:
                              # tokens, targets, segment_ids (0 = padding), positions, loss_mask
    state = it.get_state()    # small JSON-serializable dict: save it beside the train state
    it.set_state(state)       # (on a fresh `iter(ds)` built from the same config) resumes exactly
    arrays = make_global_batch(batch, sharding)   # jax.Arrays of the global batch
    it.close()                # stops worker processes and threads

`loss_mask` is 1 exactly where `targets` is a completion token (see `packing.py`); attention must
stay within `segment_ids`, and `positions` restart at every segment.

With `filter_on_load`, every process reads and parses all records and runs the (deterministic)
curation itself (dedup and the style profile need them all); for large inputs run
`experiments.filter_data` once and point `data.inputs` at its kept.jsonl instead, with
`filter_on_load=False`.

Sharding of the data: the inputs are one indexed sequence of items (`process_inputs`: files are
indexed without parsing, `sources.lazy_records`; toy corpora are generated); each process takes
items `process_index::process_count`, shuffles its shard (reshuffled every epoch), packs it and
batches `global_batch_size / process_count` rows, so processes never see the same record and
`make_global_batch` assembles their slices. With `filter_on_load=False` a process parses only
the items of its own shard, when it reaches them (an invalid item is skipped there; run
`experiments.filter_data` to have them counted). The Grain iterator state is per process
(`it.get_state()`), checkpointed by each process beside the train state. Batches are
deterministic for a given config, process count and worker count (Grain workers each pack a slice
of the shard, so changing `workers` changes the packing, and a saved state needs the same count).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import grain
import jax
import numpy as np
from absl import flags
from grain import experimental as grain_exp

from motif_jax.data import curate, formats, sources, toy_corpus
from motif_jax.data.config import DataConfig
from motif_jax.data.packing import TokenizeExample, pack
from motif_jax.data.records import Record
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import Tokenizer


def build_sft_dataset(records: Sequence[Record] | grain.MapDataset, *, tokenizer: Tokenizer,
                      template: ChatTemplate, seq_len: int, global_batch_size: int, seed: int,
                      shuffle: bool, num_epochs: int, packing_bins: int, process_index: int,
                      process_count: int, workers: int, worker_buffer: int,
                      prefetch: int) -> grain.IterDataset:
  """Packed batches of this process's slice of the global batch (see the module docstring).

  `records` is every process's records: a list, or a MapDataset whose items are parsed on access
  (None = an invalid item, skipped), of which this process only touches its own shard.
  """
  if global_batch_size % process_count:
    raise ValueError(f"data.global_batch_size={global_batch_size} must be a multiple of the "
                     f"process count {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"{process_index=} must be in [0, {process_count=})")
  if not isinstance(records, grain.MapDataset):
    records = grain.MapDataset.source(list(records))
  shard = records[process_index::process_count]
  if not any(shard[i] is not None for i in range(len(shard))):  # stops at the first valid one
    raise ValueError(f"data.inputs: process {process_index} of {process_count} has no valid "
                     f"record ({len(shard)} items in its shard, {len(records)} in all; "
                     "experiments.filter_data counts invalid items by reason)")
  if shuffle:
    shard = shard.shuffle(seed=seed)  # a new permutation every epoch
  shard = shard.repeat(num_epochs or None)
  examples = shard.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  examples = examples.map(TokenizeExample(tokenizer, template, seq_len))
  rows = pack(examples, seq_len=seq_len, num_bins=packing_bins)
  batches = rows.batch(global_batch_size // process_count, drop_remainder=True)
  if workers:
    _allow_unparsed_flags()
    return batches.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=worker_buffer))
  return grain_exp.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch)


def _allow_unparsed_flags() -> None:
  # Grain workers read absl flags; outside an absl app (tests, notebooks) nobody parsed them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def process_inputs(cfg: DataConfig) -> grain.MapDataset:
  """`cfg.inputs` as one indexed dataset whose file items are parsed only when accessed."""
  spec, parts = formats.read_spec(cfg), []
  for name in cfg.inputs:
    if name in curate.TOY_INPUTS:
      parts.append(grain.MapDataset.source(toy_corpus.corpus(cfg.toy, curate.TOY_INPUTS[name])))
    else:
      parts.extend(sources.lazy_records(path, spec) for path in sources.expand_paths([name]))
  return grain.MapDataset.concatenate(parts) if len(parts) > 1 else parts[0]


def load_sft_records(cfg: DataConfig
                     ) -> tuple[Sequence[Record] | grain.MapDataset, curate.Curation | None]:
  """`cfg.inputs`: all of them read and curated by the filters when `cfg.filter_on_load`, else
  indexed for per-process parsing (`process_inputs`)."""
  if cfg.filter_on_load:
    curation = curate.curate(cfg)
    return [item.record for item in curation.kept], curation
  return process_inputs(cfg), None


def sft_dataset(cfg: DataConfig, *, process_index: int, process_count: int
                ) -> tuple[grain.IterDataset, curate.Curation | None]:
  """The packed-batch dataset for `cfg` (call `iter` on it), and the curation that fed it."""
  records, curation = load_sft_records(cfg)
  ds = build_sft_dataset(
      records, tokenizer=curate.make_tokenizer(cfg), template=cfg.template, seq_len=cfg.seq_len,
      global_batch_size=cfg.global_batch_size, seed=cfg.seed, shuffle=cfg.shuffle,
      num_epochs=cfg.num_epochs, packing_bins=cfg.packing_bins, process_index=process_index,
      process_count=process_count, workers=cfg.workers, worker_buffer=cfg.worker_buffer,
      prefetch=cfg.prefetch)
  return ds, curation


def make_global_batch(batch: Mapping[str, np.ndarray],
                      sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """This process's rows -> global jax.Arrays laid out by `sharding` (batch axis first)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def measure_throughput(ds: grain.IterDataset, *, num_batches: int) -> dict[str, float]:
  """Time `num_batches` batches after the first one (start-up is reported separately)."""
  start = time.perf_counter()
  it = iter(ds)
  try:
    next(it)
    startup_s = time.perf_counter() - start
    tokens = slots = 0
    start = time.perf_counter()
    for _ in range(num_batches):
      segment_ids = next(it)["segment_ids"]
      tokens += int((segment_ids > 0).sum())
      slots += segment_ids.size
    elapsed_s = time.perf_counter() - start
  finally:
    it.close()  # stops worker processes and threads now, not at interpreter exit
  return dict(startup_s=startup_s, batches=num_batches, seconds=elapsed_s, packed_tokens=tokens,
              fill=tokens / slots, tokens_per_s=tokens / elapsed_s,
              batches_per_s=num_batches / elapsed_s)


def measure_reading(cfg: DataConfig, *, process_count: int) -> dict[str, float]:
  """Seconds until process 0 of `process_count` holds its records: the eager reader (parse every
  item, then slice) against the lazy one (index the files, parse the shard's items only)."""
  start = time.perf_counter()
  eager = curate.load_inputs(cfg.inputs, cfg.toy, formats.read_spec(cfg))[0][::process_count]
  eager_s = time.perf_counter() - start
  start = time.perf_counter()
  inputs = process_inputs(cfg)
  index_s = time.perf_counter() - start
  shard = inputs[::process_count]
  lazy = [r for r in (shard[i] for i in range(len(shard))) if r is not None]
  lazy_s = time.perf_counter() - start
  return dict(items=len(inputs), shard_items=len(shard), shard_records=len(lazy),
              eager_records=len(eager), eager_s=eager_s, index_s=index_s, lazy_s=lazy_s)
