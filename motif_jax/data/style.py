"""Style profile of the target model, measured on a reference sample of its own outputs.

The profile holds the mean and std of a few style features (length, reasoning-to-answer ratio,
step count, step length, step numbering, and optionally the target model's mean per-token NLL)
plus the format traits nearly every reference trace has. A trace is "far" when any feature lies
more than `max_distance` stds from the reference mean (stds floored at `min_std`), or when it
lacks a required format trait. Lengths enter as logs, so distances are in ratios, not tokens.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from motif_jax.data.traces import Scored, TraceStats

FEATURES: dict[str, Callable[[TraceStats], float]] = {
    "log_response_tokens": lambda s: math.log1p(s.response_tokens),
    "log_reasoning_ratio": lambda s: math.log((s.think_tokens + 1) / (s.answer_tokens + 1)),
    "log_num_steps": lambda s: math.log1p(s.num_steps),
    "log_mean_step_tokens": lambda s: math.log1p(s.mean_step_tokens),
    "numbered_fraction": lambda s: s.numbered_fraction,
}
NLL_FEATURE = "nll"

FORMAT_TRAITS: dict[str, Callable[[Scored], bool]] = {
    "think_block": lambda item: item.trace.has_think and item.trace.think_closed,
    "final_answer": lambda item: item.trace.answer is not None,
    "numbered_steps": lambda item: item.stats.numbered_fraction >= 0.5,
}


def feature_values(stats: TraceStats, names: Sequence[str]) -> dict[str, float]:
  out = {n: FEATURES[n](stats) for n in names if n != NLL_FEATURE}
  if NLL_FEATURE in names:
    if stats.nll is None:
      raise ValueError("the style profile uses the NLL feature but this trace has no NLL score")
    out[NLL_FEATURE] = stats.nll
  return out


@dataclasses.dataclass(frozen=True)
class StyleProfile:
  count: int  # reference traces measured
  mean: dict[str, float]
  std: dict[str, float]
  format_rates: dict[str, float]  # share of reference traces with each format trait

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, values: dict[str, Any]) -> "StyleProfile":
    return cls(**values)


def measure_profile(reference: Sequence[Scored]) -> StyleProfile:
  """Feature means/stds and format rates of reference traces; NLL is used when all have it."""
  if not reference:
    raise ValueError("the style reference sample is empty")
  names = list(FEATURES)
  if all(item.stats.nll is not None for item in reference):
    names.append(NLL_FEATURE)
  values = np.array([list(feature_values(item.stats, names).values()) for item in reference])
  rates = {name: float(np.mean([trait(item) for item in reference]))
           for name, trait in FORMAT_TRAITS.items()}
  return StyleProfile(count=len(reference), mean=dict(zip(names, values.mean(0).tolist())),
                      std=dict(zip(names, values.std(0).tolist())), format_rates=rates)


def style_distance(stats: TraceStats, profile: StyleProfile, *,
                   min_std: float) -> tuple[float, str]:
  """(max |z| over features, the feature that attains it)."""
  values = feature_values(stats, list(profile.mean))
  z = {n: abs(values[n] - profile.mean[n]) / max(profile.std[n], min_std) for n in values}
  worst = max(z, key=z.get)
  return z[worst], worst


def check_style(item: Scored, profile: StyleProfile, *, max_distance: float, min_std: float,
                min_format_rate: float) -> str | None:
  """None when the trace matches the profile; else `format_<trait>` or `far_<feature>`."""
  distance, worst = style_distance(item.stats, profile, min_std=min_std)
  if distance > max_distance:
    return f"far_{worst}"
  for name, trait in FORMAT_TRAITS.items():
    if profile.format_rates[name] >= min_format_rate and not trait(item):
      return f"format_{name}"
  return None
