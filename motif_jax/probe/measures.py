"""The cheap measures of a candidate trace set (no training): (a) NLL, (b) style, (c) verify.

(a) `nll`: the student's mean per-token NLL on the completions (token-weighted over all traces,
    each cut at `data.seq_len` tokens), the score the NLL style feature uses per trace;
(b) `style_distance`: the mean over traces of the style filter's distance (max |z| of a style
    feature against the reference profile, stds floored at `data.filters.style.min_std`), with
    `style_pass_rate`, the share the style check would keep (distance and format traits);
(c) `verify_rate`: the share of traces the domain's verifier (`data.filters.verify`) accepts; a
    domain without a method counts as unverified.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from motif_jax.data import curate, packing, style, verify
from motif_jax.data.config import DataConfig
from motif_jax.data.records import Record
from motif_jax.data.traces import Scored


def mean_token_nll(nll_per_trace: Sequence[float], tokens_per_trace: Sequence[int]) -> float:
  """Token-weighted mean of per-trace mean NLLs: total NLL / total tokens."""
  tokens = np.asarray(tokens_per_trace, np.float64)
  if tokens.sum() <= 0:
    raise ValueError("no completion tokens to score")
  return float(np.dot(np.asarray(nll_per_trace, np.float64), tokens) / tokens.sum())


def verify_rate(items: Sequence[Scored], data: DataConfig) -> float:
  def ok(item: Scored) -> bool:
    method = data.filters.verify.method_for(item.record.domain)
    return bool(method) and verify.VERIFIERS[method](item) is None
  return float(np.mean([ok(item) for item in items]))


def style_measures(items: Sequence[Scored], profile: style.StyleProfile,
                   data: DataConfig) -> dict[str, float]:
  cfg = data.filters.style
  distances = [style.style_distance(item.stats, profile, min_std=cfg.min_std)[0]
               for item in items]
  kept = [style.check_style(item, profile, max_distance=cfg.max_distance, min_std=cfg.min_std,
                            min_format_rate=cfg.min_format_rate) is None for item in items]
  return {"style_distance": float(np.mean(distances)), "style_pass_rate": float(np.mean(kept))}


def cheap_measures(records: Sequence[Record], data: DataConfig, tokenizer,
                   profile: style.StyleProfile,
                   nll_scorer: Callable[[Sequence[Record]], list[float]]) -> dict[str, float]:
  """{"traces", "nll", "style_distance", "style_pass_rate", "verify_rate"} of one candidate."""
  items = curate.score_all(records, data, tokenizer)
  tokens = [int(packing.tokenize_example(r, tokenizer, data.template)["loss_mask"]
                [:data.seq_len].sum()) for r in records]
  out = {"traces": len(records), "nll": mean_token_nll(nll_scorer(list(records)), tokens)}
  out.update(style_measures(items, profile, data))
  out["verify_rate"] = verify_rate(items, data)
  return out
