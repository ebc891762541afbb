"""Curation: load inputs, measure the target style, and run the alignment filters in order.

    inputs (files or toy) -> score traces -> [NLL] -> format -> verify -> verbosity
        -> granularity -> style -> dedup -> kept

Runs in this process on a Grain pipeline of counted filters (`filters.py`): counters must land
here, and dedup is order-dependent. The result carries everything `report.py` writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import grain

from motif_jax.data import formats, sources, toy_corpus
from motif_jax.data.config import DataConfig, ToyConfig
from motif_jax.data.filters import CountedFilter, make_filters
from motif_jax.data.records import ParseCounts, Record
from motif_jax.data.style import StyleProfile, measure_profile
from motif_jax.data.tokenizer import Tokenizer, check_fits, load_tokenizer
from motif_jax.data.traces import Scored, score

TOY_INPUTS = {
    "toy": (toy_corpus.ALIGNED, toy_corpus.MISALIGNED),
    "toy:aligned": (toy_corpus.ALIGNED,),
    "toy:misaligned": (toy_corpus.MISALIGNED,),
}


@dataclasses.dataclass
class Curation:
  scored: list[Scored]  # every parsed input, before filtering
  kept: list[Scored]
  dropped: list[tuple[Scored, str, str]]  # (trace, filter name, reason)
  filters: list[CountedFilter]
  parse_counts: dict[str, ParseCounts]  # per input file ("toy" entries count generated records)
  profile: StyleProfile | None


def load_inputs(specs: Sequence[str], toy: ToyConfig,
                read_spec: formats.ReadSpec = formats.NATIVE
                ) -> tuple[list[Record], dict[str, ParseCounts]]:
  """Records from files/globs (items read by `read_spec`) and toy corpora, in the order given,
  with per-file parse counts."""
  records, counts = [], {}
  for spec in specs:
    if spec in TOY_INPUTS:
      generated = toy_corpus.corpus(toy, TOY_INPUTS[spec])
      records.extend(generated)
      counts[spec] = ParseCounts(valid=len(generated))
    else:
      file_records, file_counts = sources.read_records([spec], read_spec)
      records.extend(file_records)
      counts.update(file_counts)
  return records, counts


def load_reference(specs: Sequence[str], toy: ToyConfig,
                   read_spec: formats.ReadSpec = formats.NATIVE) -> list[Record]:
  out = []
  for spec in specs:
    out.extend(toy_corpus.reference(toy) if spec == "toy"
               else sources.read_records([spec], read_spec)[0])
  return out


def make_tokenizer(cfg: DataConfig) -> Tokenizer:
  return load_tokenizer(cfg.tokenizer, cfg.template.special_tokens())


def check_tokenizer_fits(cfg: DataConfig, vocab_size: int) -> None:
  """data.tokenizer's ids all have an embedding row of a model with `vocab_size` (else an error
  naming both fields, before anything compiles)."""
  check_fits(make_tokenizer(cfg), vocab_size, f"data.tokenizer={cfg.tokenizer or 'bytes'!r}")


def score_all(records: Sequence[Record], cfg: DataConfig, tokenizer: Tokenizer,
              nll_scorer=None) -> list[Scored]:
  items = [score(r, tokenizer, cfg.template, cfg.trace) for r in records]
  if nll_scorer is None:
    return items
  nlls = nll_scorer([item.record for item in items])
  return [item._replace(stats=dataclasses.replace(item.stats, nll=v))
          for item, v in zip(items, nlls)]


def run_filters(items: Sequence[Scored], filters: Sequence[CountedFilter]) -> list[Scored]:
  """The items every filter keeps, in order; each filter's counters see what reaches it."""
  # In memory already: no reader threads (they would only contend for the GIL).
  ds = grain.MapDataset.source(list(items)).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  for f in filters:
    ds = ds.filter(f)
  it = iter(ds)
  try:
    return list(it)
  finally:
    it.close()  # now, not in a finalizer at interpreter exit


def _nll_scorer(cfg: DataConfig, tokenizer: Tokenizer):
  if not cfg.filters.style.nll_checkpoint or "style" not in cfg.filters.order:
    return None
  from motif_jax import checkpoint  # noqa: PLC0415 (jax model code only when NLL is on)
  from motif_jax.data.nll import make_nll_scorer  # noqa: PLC0415
  model_cfg, params = checkpoint.restore_params(cfg.filters.style.nll_checkpoint)
  return make_nll_scorer(params, model_cfg, tokenizer, cfg.template, seq_len=cfg.seq_len,
                         batch_size=cfg.filters.style.nll_batch_size)


def curate(cfg: DataConfig) -> Curation:
  """Load `cfg.inputs`, measure the reference profile, filter, and report what happened."""
  tokenizer = make_tokenizer(cfg)
  read_spec = formats.read_spec(cfg)
  records, parse_counts = load_inputs(cfg.inputs, cfg.toy, read_spec)
  nll_scorer = _nll_scorer(cfg, tokenizer)
  profile = None
  if cfg.reference and "style" in cfg.filters.order:
    reference = score_all(load_reference(cfg.reference, cfg.toy, read_spec), cfg, tokenizer,
                          nll_scorer)
    profile = measure_profile(reference)
  items = score_all(records, cfg, tokenizer, nll_scorer)
  filters = make_filters(cfg.filters, profile)
  kept = run_filters(items, filters)
  dropped = [(item, f.name, reason) for f in filters for item, reason in f.drops]
  return Curation(scored=items, kept=kept, dropped=dropped, filters=filters,
                  parse_counts=parse_counts, profile=profile)


def save(workdir: str, curation: Curation) -> None:
  """kept.jsonl, dropped.jsonl (with `dropped_by` and `drop_reason`) and style_profile.json."""
  os.makedirs(workdir, exist_ok=True)
  sources.write_records(os.path.join(workdir, "kept.jsonl"),
                        [item.record for item in curation.kept])
  dropped = [dataclasses.replace(item.record, meta={**item.record.meta, "dropped_by": name,
                                                    "drop_reason": reason})
             for item, name, reason in curation.dropped]
  sources.write_records(os.path.join(workdir, "dropped.jsonl"), dropped)
  if curation.profile is not None:
    with open(os.path.join(workdir, "style_profile.json"), "w") as f:
      json.dump(curation.profile.to_json(), f, indent=2)
