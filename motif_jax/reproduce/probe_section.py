"""Section 3: the internal evaluation loop: the teacher probe's cheap measures against the SFT
outcome, from the probe runs (`experiments.probe_teachers`, one per probe seed) and the study's
own SFT runs of the aligned and misaligned teachers (section 1)."""

from __future__ import annotations

import math

import numpy as np

from motif_jax.reproduce import stats
from motif_jax.reproduce.sections import (PASS1, Section, Table, by_condition, fmt, mean_sd_ci,
                                          missing_note)

TITLE = "Internal evaluation loop: teacher probe measures vs SFT outcome"
CLAIM = ("Cheap measures of a teacher's traces (student NLL, style distance to the target, "
         "verification rate) predict which teacher's traces give the better SFT outcome, so "
         "teachers are screened before paying for SFT (recipe §1.1: the internal evaluation "
         "loop that found the misaligned-teacher effect).")
CHEAP = (("nll", "(a) student NLL", False), ("style_distance", "(b) style distance", False),
         ("verify_rate", "(c) verify rate", True))
TEACHERS = {"teacher_aligned": "aligned", "teacher_misaligned": "misaligned"}


def measure_check(label: str, rhos: list[float | None]) -> stats.Verdict:
  """Supported: Spearman +1 with the probe's SFT ranking on every probe seed where defined;
  not supported: mean rho <= 0; inconclusive otherwise (partial agreement, or undefined)."""
  defined = [r for r in rhos if r is not None and not math.isnan(r)]
  shown = ", ".join("undefined" if r is None else f"{r:+.2f}" for r in rhos)
  if not defined:
    return stats.Verdict(stats.INCONCLUSIVE, f"{label}: Spearman undefined on {len(rhos)} of "
                                             f"{len(rhos)} probe seed(s): the measure (or the "
                                             "SFT outcome) is the same for every teacher")
  mean = float(np.mean(defined))
  text = f"{label}: Spearman rho with the SFT probe's ranking {shown} (mean {mean:+.2f})"
  if all(r >= 0.999 for r in defined):
    return stats.Verdict(stats.SUPPORTED, text + ": the same order on every seed")
  if mean <= 0:
    return stats.Verdict(stats.NOT_SUPPORTED, text)
  return stats.Verdict(stats.INCONCLUSIVE, text + ": agrees only in part")


def section(results: dict, study, commands: list[str]) -> Section:
  out = Section(3, TITLE, CLAIM, commands=commands)
  probes = [p for p in results.get("probe", []) if p]
  points = results["phases"].get("probe", [])
  if not probes:
    out.status, out.reason = "incomplete", "no probe run has finished"
    out.notes += missing_note(points)
    return out
  names = [c["name"] for c in probes[0]["candidates"]]
  rank_by = probes[0].get("rank_by", "pass@1")  # what the probe ranks its SFT outcome by
  rows = []
  for name in names:
    cs = [c for p in probes for c in p["candidates"] if c["name"] == name]
    rows.append([name, *[fmt(float(np.mean([c[k] for c in cs])), ".3f") for k, _, _ in CHEAP],
                 mean_sd_ci([c["probe_pass@1"] for c in cs], study.confidence),
                 fmt(float(np.mean([c.get(f"probe_{rank_by}", math.nan) for c in cs]))),
                 f"{np.mean([p['ranking'].index(name) + 1 for p in probes]):.1f}"])
  out.tables.append(Table(
      f"Probe measures per teacher (mean over {len(probes)} probe seed(s)); (d) is the probe's "
      f"own short SFT from the student on {probes[0]['token_budget']:,} completion tokens per "
      f"epoch, evaluated on held-out problems and ranked by {rank_by}",
      ["teacher", *[label for _, label, _ in CHEAP], "(d) pass@1", f"(d) {rank_by}",
       "rank by (d)"], rows))
  for key, label, _ in CHEAP:
    rhos = [p["correlations"][key]["spearman"] for p in probes]
    out.checks.append((f"{label} orders the teachers as SFT on their traces does",
                       "Spearman rho with the probe's SFT ranking", measure_check(label, rhos)))
  out.checks.append(_study_cross_check(results, probes))
  out.notes.append("Probe recommendation (seed 0): " + probes[0]["recommendation"])
  out.notes += missing_note(points)
  return out


def _study_cross_check(results: dict, probes: list[dict]) -> tuple[str, str, stats.Verdict]:
  """Does the probe put the aligned teacher above the misaligned one, as the study's own,
  larger SFT runs (section 1) do?"""
  lesson = "the probe ranks the aligned and misaligned teachers as the study's SFT runs do"
  measured = "probe ranking vs the study's SFT pass@1 (section 1)"
  by = by_condition(results["phases"].get("data", []))
  means = {c: np.mean([p["final"][PASS1] for p in by.get(c, {}).values()] or [math.nan])
           for c in TEACHERS.values()}
  if any(math.isnan(v) for v in means.values()):
    return lesson, measured, stats.Verdict(
        stats.INCONCLUSIVE, "the study's aligned / misaligned SFT runs have not finished")
  if means["aligned"] == means["misaligned"]:
    return lesson, measured, stats.Verdict(
        stats.INCONCLUSIVE, f"the study's SFT runs tie at pass@1 {means['aligned']:.3f}: nothing "
                            "to rank")
  study_first = max(means, key=means.get)
  agree = [TEACHERS[min((t for t in p["ranking"] if t in TEACHERS),
                        key=p["ranking"].index)] == study_first for p in probes]
  text = (f"study SFT pass@1 aligned {means['aligned']:.3f} vs misaligned "
          f"{means['misaligned']:.3f}; the probe ranks the study's better teacher first on "
          f"{sum(agree)} of {len(agree)} seed(s)")
  label = (stats.SUPPORTED if all(agree) else
           stats.NOT_SUPPORTED if not any(agree) else stats.INCONCLUSIVE)
  return lesson, measured, stats.Verdict(label, text)
