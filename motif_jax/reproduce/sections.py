"""Report sections computed from collected results: tables, paired comparisons, verdicts, plots.

Every number in a section comes from `collect.collect`'s results; every verdict comes from
`stats.verdict` on the per-seed values of the two conditions it compares (pairs are matched by
seed; a seed missing on either side is left out and the count says so).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from motif_jax.reproduce import plots, stats
from motif_jax.reproduce.collect import PASS1, difficulties, per_difficulty


@dataclasses.dataclass
class Table:
  caption: str
  header: list[str]
  rows: list[list[str]]


@dataclasses.dataclass
class Comparison:
  lesson: str  # what the recipe predicts, in words
  metric: str
  better: str  # condition predicted better
  worse: str
  better_values: list[float]
  worse_values: list[float]
  seeds: list[int]
  verdict: stats.Verdict
  budget: str  # the counted budgets of the two sides


@dataclasses.dataclass
class Section:
  number: int
  title: str
  claim: str  # the recipe's lesson (recipe §7)
  status: str = "ran"  # ran | not run | incomplete
  reason: str = ""  # why not run / what is missing
  tables: list[Table] = dataclasses.field(default_factory=list)
  comparisons: list[Comparison] = dataclasses.field(default_factory=list)
  # Unpaired judgements: (lesson, what measured it, verdict).
  checks: list[tuple[str, str, stats.Verdict]] = dataclasses.field(default_factory=list)
  figures: list[plots.Figure] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  commands: list[str] = dataclasses.field(default_factory=list)


def fmt(x: float | None, spec: str = ".3f") -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def mean_sd_ci(values: Sequence[float], confidence: float) -> str:
  s = stats.summarize(values, confidence)
  if s.n == 0:
    return "n/a"
  if s.n == 1:
    return f"{fmt(s.mean)} (1 seed)"
  return f"{fmt(s.mean)} ± {fmt(s.std)} [{fmt(s.lo)}, {fmt(s.hi)}]"


def finished(points: Sequence[dict]) -> list[dict]:
  return [p for p in points if p["status"] == "done" and p["final"]]


def by_condition(points: Sequence[dict]) -> dict[str, dict[int, dict]]:
  out: dict[str, dict[int, dict]] = {}
  for p in finished(points):
    out.setdefault(p["condition"], {})[p["seed"]] = p
  return out


def sft_table(caption: str, groups: dict[str, list[dict]], labels: dict[str, str],
              confidence: float) -> Table:
  """One row per condition: pass@1 (mean ± sd [CI]) overall and per difficulty, format, loss,
  trained tokens. `groups` maps condition -> its finished points (several seeds)."""
  diffs = difficulties([p for ps in groups.values() for p in ps])
  header = ["condition", "seeds", "pass@1 mean ± sd [CI]", *[f"pass@1 {d}" for d in diffs],
            "well-formed", "held-out loss", "trained tokens (mean)"]
  rows = []
  for name, ps in groups.items():
    if not ps:
      rows.append([labels.get(name, name), "0", "not run", *[""] * (len(header) - 3)])
      continue
    rows.append([
        labels.get(name, name), str(len(ps)),
        mean_sd_ci([p["final"][PASS1] for p in ps], confidence),
        *[fmt(_mean([per_difficulty(p["final"], d) for p in ps])) for d in diffs],
        fmt(_mean([p["final"].get("eval/format_ok", math.nan) for p in ps])),
        fmt(_mean([p["final"].get("eval/loss", math.nan) for p in ps])),
        f"{_mean([p['tokens'] for p in ps]):,.0f}"])
  return Table(caption, header, rows)


def _mean(values: Sequence[float]) -> float:
  clean = [v for v in values if v is not None and not math.isnan(v)]
  return sum(clean) / len(clean) if clean else math.nan


def compare(lesson: str, better: str, worse: str, by_seed_better: dict[int, dict],
            by_seed_worse: dict[int, dict], *, metric: Callable[[dict], float],
            metric_name: str, higher_is_better: bool, margin: float, confidence: float,
            tokens: Callable[[dict], float] = lambda p: p["tokens"]) -> Comparison:
  """A paired comparison over the seeds both sides finished."""
  seeds = sorted(set(by_seed_better) & set(by_seed_worse))
  a = [metric(by_seed_better[s]) for s in seeds]
  b = [metric(by_seed_worse[s]) for s in seeds]
  verdict = stats.verdict(a, b, higher_is_better=higher_is_better, margin=margin,
                          confidence=confidence)
  ta = [tokens(by_seed_better[s]) for s in seeds]
  tb = [tokens(by_seed_worse[s]) for s in seeds]
  return Comparison(lesson, metric_name, better, worse, a, b, seeds, verdict,
                    budget_text(ta, tb))


def budget_text(tokens_a: Sequence[float], tokens_b: Sequence[float]) -> str:
  """The counted budgets of two sides and their largest relative gap over paired runs."""
  pairs = [(a, b) for a, b in zip(tokens_a, tokens_b) if not (math.isnan(a) or math.isnan(b))]
  if not pairs:
    return "trained tokens not logged"
  gap = max(abs(a - b) / max(a, b) for a, b in pairs)
  mean_a, mean_b = _mean([a for a, _ in pairs]), _mean([b for _, b in pairs])
  return (f"trained tokens {mean_a:,.0f} vs {mean_b:,.0f}"
          f" (largest paired gap {100 * gap:.1f}%)")


def missing_note(points: Sequence[dict]) -> list[str]:
  bad = [p for p in points if p["status"] != "done"]
  if not bad:
    return []
  return [f"{len(bad)} of {len(points)} runs not finished: " + ", ".join(
      f"{p['condition']}/seed {p['seed']} ({p['status']})" for p in bad)]
