"""Difficulty-aware filtering: pass-rate estimates, the band, and DAPO-style online filtering.

- `offline_pass_rates`: per-prompt pass rates from k scored samples each (before RL).
- `PassRateStats`: per-prompt sample / pass counts and an EMA kept across training; a prompt is
  kept while its EMA lies inside [rl.pass_rate_low, rl.pass_rate_high] (unseen prompts are kept
  until measured), retired when it leaves the band and re-admitted when new samples bring it back.
  Checkpointed as JSON (`state_dict` / `from_state_dict`).
- `OnlineFilter`: collects finished groups, drops those whose rewards are all equal (no
  group-relative signal), hands out full batches and counts what it dropped. Its pass rate is
  over finished groups only: a group still being sampled or scored is never in the denominator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


def offline_pass_rates(prompt_ids, passed, num_prompts: int) -> tuple[np.ndarray, np.ndarray]:
  """(passes [P], samples [P]) from one entry per scored sample; rate = passes / samples."""
  prompt_ids = np.asarray(prompt_ids, np.int64)
  passes = np.bincount(prompt_ids, weights=np.asarray(passed, np.float64), minlength=num_prompts)
  samples = np.bincount(prompt_ids, minlength=num_prompts)
  return passes.astype(np.int64), samples.astype(np.int64)


def in_band(rate: np.ndarray, low: float, high: float) -> np.ndarray:
  """rate inside the closed band [low, high]; NaN (never measured) counts as inside."""
  rate = np.asarray(rate, np.float64)
  return np.isnan(rate) | ((rate >= low) & (rate <= high))


@dataclasses.dataclass
class PassRateStats:
  """Per-prompt statistics over the whole run (mutable; `update` returns the transitions)."""

  low: float
  high: float
  ema_weight: float  # weight of the newest batch estimate
  samples: np.ndarray  # [P] int64, all samples scored
  passes: np.ndarray  # [P] int64
  ema: np.ndarray  # [P] float64, NaN = never measured

  @classmethod
  def create(cls, num_prompts: int, *, low: float, high: float, ema_weight: float
             ) -> "PassRateStats":
    return cls(low, high, ema_weight, np.zeros(num_prompts, np.int64),
               np.zeros(num_prompts, np.int64), np.full(num_prompts, np.nan))

  def active(self) -> np.ndarray:
    """[P] bool: prompts the queue may draw (inside the band or unseen)."""
    return in_band(self.ema, self.low, self.high)

  def update(self, prompt_ids, passed) -> dict[str, int]:
    """Add scored samples (one entry each); returns counts of prompts retired / re-admitted."""
    before = self.active()
    passes, samples = offline_pass_rates(prompt_ids, passed, len(self.samples))
    seen = samples > 0
    rate = np.where(seen, passes / np.maximum(samples, 1), np.nan)
    first = seen & np.isnan(self.ema)
    self.ema = np.where(first, rate, self.ema)
    again = seen & ~first
    self.ema = np.where(again, (1 - self.ema_weight) * self.ema + self.ema_weight * rate,
                        self.ema)
    self.samples = self.samples + samples
    self.passes = self.passes + passes
    after = self.active()
    return {"retired": int(np.sum(before & ~after)), "readmitted": int(np.sum(~before & after)),
            "active": int(np.sum(after))}

  def state_dict(self) -> dict[str, Any]:
    return {"low": self.low, "high": self.high, "ema_weight": self.ema_weight,
            "samples": self.samples.tolist(), "passes": self.passes.tolist(),
            "ema": [None if np.isnan(e) else float(e) for e in self.ema]}

  @classmethod
  def from_state_dict(cls, state: dict[str, Any]) -> "PassRateStats":
    return cls(state["low"], state["high"], state["ema_weight"],
               np.asarray(state["samples"], np.int64), np.asarray(state["passes"], np.int64),
               np.array([np.nan if e is None else e for e in state["ema"]], np.float64))


@dataclasses.dataclass(frozen=True)
class Group:
  """One prompt's finished, scored samples; `payload` is whatever the caller batches later."""

  prompt_id: int
  rewards: Sequence[float]
  passed: Sequence[bool]
  payload: Any = None


def degenerate(rewards: Sequence[float]) -> bool:
  """All rewards equal: every group-relative advantage is 0 (the group teaches nothing)."""
  r = np.asarray(rewards, np.float64)
  return bool(r.size == 0 or np.all(r == r[0]))


@dataclasses.dataclass
class OnlineFilter:
  """Keeps non-degenerate groups until `groups_per_batch` are ready (refill: sample more)."""

  groups_per_batch: int
  enabled: bool = True
  pending: list = dataclasses.field(default_factory=list)
  counts: dict = dataclasses.field(default_factory=lambda: dict(
      finished=0, kept=0, dropped=0, dropped_all_pass=0, dropped_all_fail=0, samples=0,
      passes=0))

  def add(self, groups: Sequence[Group]) -> None:
    """Add finished groups (only finished ones: the pass-rate denominator counts these)."""
    for g in groups:
      self.counts["finished"] += 1
      self.counts["samples"] += len(g.passed)
      self.counts["passes"] += int(np.sum(g.passed))
      if self.enabled and degenerate(g.rewards):
        self.counts["dropped"] += 1
        self.counts["dropped_all_pass"] += int(all(g.passed))
        self.counts["dropped_all_fail"] += int(not any(g.passed))
      else:
        self.counts["kept"] += 1
        self.pending.append(g)

  @property
  def ready(self) -> bool:
    return len(self.pending) >= self.groups_per_batch

  @property
  def needed(self) -> int:
    """Groups still missing for the next batch (how many prompts to sample next)."""
    return max(self.groups_per_batch - len(self.pending), 0)

  def take(self) -> tuple[list[Group], list[Group]]:
    """(the next full batch, oldest groups first; the surplus). Nothing stays pending, so a
    checkpoint between batches holds only `counts`; the caller may replay the surplus."""
    if not self.ready:
      raise ValueError(f"only {len(self.pending)} of {self.groups_per_batch} groups are ready")
    batch, surplus = self.pending[:self.groups_per_batch], self.pending[self.groups_per_batch:]
    self.pending = []
    return batch, surplus

  def state_dict(self) -> dict[str, int]:
    return dict(self.counts)

  def load_state_dict(self, counts: dict[str, int]) -> None:
    self.counts = dict(counts)

  def metrics(self) -> dict[str, float]:
    c = self.counts
    return {"filter/finished_groups": c["finished"], "filter/kept_groups": c["kept"],
            "filter/dropped_groups": c["dropped"],
            "filter/dropped_all_pass": c["dropped_all_pass"],
            "filter/dropped_all_fail": c["dropped_all_fail"],
            "filter/keep_rate": c["kept"] / max(c["finished"], 1),
            "filter/pass_rate": c["passes"] / max(c["samples"], 1)}
