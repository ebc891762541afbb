"""Section 5: RL stability: pass-rate band on/off, replay on/off, symmetric vs asymmetric clip."""

from __future__ import annotations

import math

import numpy as np

from motif_jax.reproduce import plots
from motif_jax.reproduce.sections import (PASS1, Section, Table, by_condition, compare, fmt,
                                          mean_sd_ci, missing_note)
from motif_jax.reproduce.study import RL_CONDITIONS

LABELS = {c.name: c.label for c in RL_CONDITIONS}
TITLE = "RL stability: band filter, replay, clipping"
CLAIM = ("A pass-rate band filter stabilizes RL (without it many groups have zero advantage and "
         "reward can regress or entropy collapse); mixed-policy trajectory reuse improves sample "
         "efficiency without destabilizing training (recipe §7.4, §7.5); clip-higher "
         "(asymmetric clipping) keeps entropy from collapsing (recipe §5.1, DAPO).")
CURVE_PANELS = (("rollout/reward", "reward (fresh rollouts)"), ("eval/accuracy", "held-out pass@1"),
                ("entropy", "entropy (nats/token)"), ("clip/high", "clip fraction (high)"),
                ("clip/low", "clip fraction (low)"),
                ("rollout/response_length", "response length (tokens)"))


def _values(p: dict, metric: str) -> list[float]:
  return [v for _, v in p["curves"].get(metric, [])]


def last(p: dict, metric: str) -> float:
  values = _values(p, metric)
  return values[-1] if values else math.nan


def late_mean(p: dict, metric: str) -> float:
  """Mean over the last third of the logged steps (at least one)."""
  values = _values(p, metric)
  return float(np.mean(values[-max(1, len(values) // 3):])) if values else math.nan


def drawdown(p: dict, metric: str) -> float:
  """Largest fall of the curve below its running maximum (0 for a curve that never falls)."""
  values = np.asarray(_values(p, metric))
  return float(np.max(np.maximum.accumulate(values) - values)) if values.size else math.nan


def _final_pass1(p: dict) -> float:
  return p["final"].get(PASS1, math.nan)


def rl(results: dict, study, commands: list[str]) -> Section:
  section = Section(5, TITLE, CLAIM, commands=commands)
  points = results["phases"].get("rl", [])
  by = by_condition(points)
  names = [c.name for c in RL_CONDITIONS]
  header = ["condition", "seeds", "held-out pass@1 (end) mean ± sd [CI]", "reward (last third)",
            "reward drawdown", "entropy (end)", "clip high / low (mean)", "kept groups (mean)",
            "response length (end)"]
  rows = []
  for name in names:
    ps = [by.get(name, {})[s] for s in sorted(by.get(name, {}))]
    if not ps:
      rows.append([LABELS[name], "0", "not run", *[""] * (len(header) - 3)])
      continue
    m = lambda f: float(np.nanmean([f(p) for p in ps]))  # noqa: E731
    rows.append([LABELS[name], str(len(ps)), mean_sd_ci([_final_pass1(p) for p in ps],
                                                        study.confidence),
                 fmt(m(lambda p: late_mean(p, "rollout/reward"))),
                 fmt(m(lambda p: drawdown(p, "rollout/reward"))),
                 fmt(m(lambda p: last(p, "entropy"))),
                 f"{fmt(m(lambda p: late_mean(p, 'clip/high')), '.4f')} / "
                 f"{fmt(m(lambda p: late_mean(p, 'clip/low')), '.4f')}",
                 fmt(m(lambda p: float(np.mean(_values(p, 'filter/keep_rate') or [math.nan])))),
                 fmt(m(lambda p: last(p, "rollout/response_length")), ".1f")])
  section.tables.append(Table("RL from each seed's aligned SFT run, equal rollout batches",
                              header, rows))
  recipe = by.get("recipe", {})
  tokens = lambda p: p["tokens"]  # noqa: E731 (update tokens: equal batches, counted)
  acc = dict(metric=_final_pass1, metric_name="held-out pass@1", higher_is_better=True,
             margin=study.accuracy_margin, confidence=study.confidence, tokens=tokens)
  section.comparisons += [
      compare("the pass-rate band (and online filter) gives better held-out accuracy than none",
              "recipe", "no_band", recipe, by.get("no_band", {}), **acc),
      compare("replaying recent trajectories raises held-out accuracy at equal rollout batches "
              "(sample efficiency)",
              "recipe", "no_replay", recipe, by.get("no_replay", {}), **acc),
      compare("clip-higher keeps more entropy than symmetric clipping", "recipe", "symmetric",
              recipe, by.get("symmetric", {}), metric=lambda p: last(p, "entropy"),
              metric_name="entropy at the end", higher_is_better=True,
              margin=study.entropy_margin, confidence=study.confidence, tokens=tokens),
  ]
  series = {n: [by[n][s]["curves"] for s in sorted(by.get(n, {}))] for n in names if by.get(n)}
  if series:
    section.figures.append(plots.curves("rl_curves", "RL curves (mean over seeds)", series,
                                        CURVE_PANELS, LABELS))
  section.notes.append("Budgets: every condition runs the same number of rollout batches of "
                       "the same size; 'trained tokens' counts the completion tokens the updates "
                       "saw (they differ with response lengths and filtering).")
  section.notes += missing_note(points)
  return section
