"""Alignment filters: small named predicates over scored traces, run as Grain filters with counters.

Each check maps a `Scored` trace to None (keep) or a short drop reason. `CountedFilter` wraps one
check as a `grain.transforms.Filter` and counts every outcome by (outcome, domain, source), so the
numbers add up: seen = kept + sum(dropped). Counters live in the process that runs the filter;
curation therefore runs in-process (`curate.py`), and `dedup` must, being order-dependent.

| name        | keeps a trace when                                                             |
|-------------|--------------------------------------------------------------------------------|
| format      | it opens and closes the think block and a final answer can be extracted        |
| verify      | its answer checks out (exact / math-verify) or, for code, it carries tests     |
| verbosity   | response tokens and the think-to-answer token ratio lie in their bands         |
| granularity | the step count and mean step length lie in their bands                         |
| style       | it is within `max_distance` stds of the target style profile on every feature  |
| dedup       | it is neither an exact nor a near duplicate of an earlier kept trace           |
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable
from typing import Any

import grain

from motif_jax.data import style
from motif_jax.data.config import FilterConfig, GranularityConfig, VerbosityConfig, VerifyConfig
from motif_jax.data.dedup import Deduplicator
from motif_jax.data.traces import Scored
from motif_jax.data.verify import VERIFIERS

Check = Callable[[Scored], "str | None"]
KEPT = "kept"


class FilterCounts:
  """Outcome counts keyed by (outcome, domain, source); outcome is "kept" or a drop reason."""

  def __init__(self):
    self.outcomes: collections.Counter = collections.Counter()
    self._lock = threading.Lock()

  def add(self, outcome: str, domain: str, source: str) -> None:
    with self._lock:
      self.outcomes[(outcome, domain, source)] += 1

  @property
  def seen(self) -> int:
    return sum(self.outcomes.values())

  @property
  def kept(self) -> int:
    return sum(n for (outcome, _, _), n in self.outcomes.items() if outcome == KEPT)

  def dropped(self) -> dict[str, int]:
    out = collections.Counter()
    for (outcome, _, _), n in self.outcomes.items():
      if outcome != KEPT:
        out[outcome] += n
    return dict(sorted(out.items()))

  def by(self, key: str) -> dict[str, dict[str, int]]:
    """{domain or source: {"seen", "kept", "dropped"}}."""
    index = {"domain": 1, "source": 2}[key]
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for outcome_key, n in self.outcomes.items():
      group = out[outcome_key[index]]
      group["seen"] += n
      group["kept" if outcome_key[0] == KEPT else "dropped"] += n
    return {k: {f: v[f] for f in ("seen", "kept", "dropped")} for k, v in sorted(out.items())}

  def to_json(self) -> dict[str, Any]:
    return dict(seen=self.seen, kept=self.kept, dropped=self.dropped(),
                by_domain=self.by("domain"), by_source=self.by("source"))


class CountedFilter(grain.transforms.Filter):
  """A named check as a Grain filter; keeps what `check` accepts and counts every outcome.

  `drops` lists the dropped elements with their reasons (for `dropped.jsonl`).
  """

  def __init__(self, name: str, check: Check):
    self.name, self.check, self.counts = name, check, FilterCounts()
    self.drops: list[tuple[Scored, str]] = []

  def filter(self, element: Scored) -> bool:
    reason = self.check(element)
    self.counts.add(reason or KEPT, element.record.domain, element.record.source)
    if reason is not None:
      self.drops.append((element, reason))
    return reason is None


def check_format(item: Scored) -> str | None:
  if not item.trace.has_think:
    return "no_think_block"
  if not item.trace.think_closed:
    return "unclosed_think"
  if not item.trace.steps:
    return "empty_think"
  if item.trace.answer is None:
    return "no_final_answer"
  return None


def check_verified(item: Scored, cfg: VerifyConfig) -> str | None:
  method = cfg.method_for(item.record.domain)
  return VERIFIERS[method](item) if method else "unverifiable_domain"


def _band(value: float, low: float, high: float, below: str, above: str) -> str | None:
  return below if value < low else above if value > high else None


def check_verbosity(item: Scored, cfg: VerbosityConfig) -> str | None:
  s = item.stats
  ratio = s.think_tokens / max(s.answer_tokens, 1)
  return (_band(s.response_tokens, cfg.min_tokens, cfg.max_tokens, "too_short", "too_long") or
          _band(ratio, cfg.min_ratio, cfg.max_ratio, "ratio_low", "ratio_high"))


def check_granularity(item: Scored, cfg: GranularityConfig) -> str | None:
  s = item.stats
  return (_band(s.num_steps, cfg.min_steps, cfg.max_steps, "too_few_steps", "too_many_steps") or
          _band(s.mean_step_tokens, cfg.min_step_tokens, cfg.max_step_tokens,
                "steps_too_short", "steps_too_long"))


def make_dedup_check(cfg: FilterConfig) -> Check:
  dedup = Deduplicator(shingle_chars=cfg.dedup.shingle_chars, num_perm=cfg.dedup.num_perm,
                       bands=cfg.dedup.bands, threshold=cfg.dedup.threshold)
  return lambda item: dedup.check(f"{item.record.prompt}\n{item.record.response}")


def make_check(name: str, cfg: FilterConfig, profile: style.StyleProfile | None) -> Check:
  """The check called `name`, bound to its config (and the style profile for `style`)."""
  if name == "style":
    if profile is None:
      raise ValueError("the style filter needs a reference profile (data.reference)")
    s = cfg.style
    return functools.partial(style.check_style, profile=profile, max_distance=s.max_distance,
                             min_std=s.min_std, min_format_rate=s.min_format_rate)
  builders: dict[str, Callable[[], Check]] = {
      "format": lambda: check_format,
      "verify": lambda: functools.partial(check_verified, cfg=cfg.verify),
      "verbosity": lambda: functools.partial(check_verbosity, cfg=cfg.verbosity),
      "granularity": lambda: functools.partial(check_granularity, cfg=cfg.granularity),
      "dedup": lambda: make_dedup_check(cfg),
  }
  return builders[name]()


def make_filters(cfg: FilterConfig, profile: style.StyleProfile | None) -> list[CountedFilter]:
  """Fresh counted filters in `cfg.order` (fresh: dedup state and counters start empty)."""
  return [CountedFilter(name, make_check(name, cfg, profile)) for name in cfg.order]
