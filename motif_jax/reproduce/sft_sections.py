"""Sections 1 (alignment), 2 (verification) and 4 (curriculum): SFT outcomes by condition."""

from __future__ import annotations

from motif_jax.reproduce import plots
from motif_jax.reproduce.sections import (PASS1, Section, by_condition, compare, missing_note,
                                          sft_table)
from motif_jax.reproduce.study import DATA_CONDITIONS

LABELS = {c.name: c.label for c in DATA_CONDITIONS}
LABELS.update({"stage2": "two stages: short traces in short rows, then all in full rows",
               "mixed": "single mixed stage (all traces, full rows)"})
TITLE_ALIGNMENT = "Alignment: aligned vs misaligned teacher vs unfiltered vs filtered mix"
TITLE_VERIFY = "Verification: verified vs unverified traces"
TITLE_CURRICULUM = "Curriculum: two stages vs one mixed stage at the same token budget"
CLAIM_ALIGNMENT = ("Misaligned synthetic traces hurt SFT: at equal token budget, traces from a "
                   "teacher whose format, verbosity or step granularity differs from the "
                   "student's give lower pass@1 than aligned, verified traces (recipe §7.1).")
CLAIM_VERIFY = ("Verification matters: filtering traces by answer correctness before SFT "
                "improves results over unverified traces (recipe §7.2).")
CLAIM_CURRICULUM = ("A two-stage SFT curriculum (shorter first, then long reasoning) beats a "
                    "single mixed stage at the same token budget (recipe §7.3).")


def _groups(by: dict, names) -> dict[str, list[dict]]:
  return {n: [by[n][s] for s in sorted(by.get(n, {}))] for n in names}


def _pass1(p: dict) -> float:
  return p["final"][PASS1]


def alignment(results: dict, study, commands: list[str]) -> Section:
  section = Section(1, TITLE_ALIGNMENT, CLAIM_ALIGNMENT, commands=commands)
  points = results["phases"].get("data", [])
  by = by_condition(points)
  names = ["aligned", "misaligned", "mix_unfiltered", "mix_filtered"]
  groups = _groups(by, names)
  section.tables.append(sft_table("Held-out greedy pass@1 after SFT at equal completion-token "
                                  "budget (mean ± sd over seeds, 95% t interval)", groups, LABELS,
                                  study.confidence))
  common = dict(metric=_pass1, metric_name="pass@1", higher_is_better=True,
                margin=study.accuracy_margin, confidence=study.confidence)
  section.comparisons += [
      compare("aligned, verified traces beat verified traces of the misaligned teacher",
              "aligned", "misaligned", by.get("aligned", {}), by.get("misaligned", {}), **common),
      compare("the alignment filters make the two-teacher mix better than the unfiltered mix",
              "mix_filtered", "mix_unfiltered", by.get("mix_filtered", {}),
              by.get("mix_unfiltered", {}), **common),
      compare("aligned traces beat the unfiltered two-teacher mix", "aligned", "mix_unfiltered",
              by.get("aligned", {}), by.get("mix_unfiltered", {}), **common),
  ]
  section.figures.append(plots.pass1_by_difficulty(
      "alignment", "pass@1 by difficulty (mean over seeds; bars: sd)", groups, LABELS))
  section.notes += missing_note([p for p in points if p["condition"] in names])
  return section


def verification(results: dict, study, commands: list[str]) -> Section:
  section = Section(2, TITLE_VERIFY, CLAIM_VERIFY, commands=commands)
  points = results["phases"].get("data", [])
  by = by_condition(points)
  names = ["misaligned", "unverified"]
  groups = _groups(by, names)
  labels = {"misaligned": "verified (misaligned teacher, wrong answers dropped)",
            "unverified": "unverified (misaligned teacher, wrong answers kept)"}
  section.tables.append(sft_table("Held-out greedy pass@1 after SFT on the misaligned teacher's "
                                  "traces with and without answer verification", groups, labels,
                                  study.confidence))
  section.comparisons.append(compare(
      "verified traces beat unverified traces", "misaligned", "unverified",
      by.get("misaligned", {}), by.get("unverified", {}), metric=_pass1, metric_name="pass@1",
      higher_is_better=True, margin=study.accuracy_margin, confidence=study.confidence))
  section.notes.append("The aligned teacher makes no mistakes, so verification is measured on "
                       "the misaligned teacher's traces (toy.error_rate of them carry a slipped "
                       "intermediate result); both sides keep the format filter.")
  section.figures.append(plots.pass1_by_difficulty(
      "verification", "pass@1 by difficulty (mean over seeds; bars: sd)", groups, labels))
  section.notes += missing_note([p for p in points if p["condition"] in names])
  return section


def curriculum(results: dict, study, commands: list[str]) -> Section:
  section = Section(4, TITLE_CURRICULUM, CLAIM_CURRICULUM, commands=commands)
  stage1 = {p["seed"]: p for p in results["phases"].get("curriculum_stage1", [])}
  stage2 = by_condition(results["phases"].get("curriculum_stage2", [])).get("stage2", {})
  mixed = by_condition(results["phases"].get("data", [])).get("aligned", {})
  # The two-stage run's budget is both stages' tokens.
  two_stage = {s: {**p, "tokens": p["tokens"] + stage1[s]["tokens"]}
               for s, p in stage2.items() if s in stage1}
  groups = {"stage2": [two_stage[s] for s in sorted(two_stage)],
            "mixed": [mixed[s] for s in sorted(mixed)]}
  section.tables.append(sft_table("Held-out greedy pass@1 at the end of each curriculum "
                                  "(trained tokens: both stages together)", groups, LABELS,
                                  study.confidence))
  section.comparisons.append(compare(
      "two-stage SFT beats a single mixed stage at the same budget", "stage2", "mixed",
      two_stage, mixed, metric=_pass1, metric_name="pass@1", higher_is_better=True,
      margin=study.accuracy_margin, confidence=study.confidence))
  cur = study.curriculum
  section.notes.append(
      f"Stage 1 trains on aligned traces of at most {cur.stage1_max_tokens} response tokens in "
      f"{cur.stage1_seq_len}-token rows for {cur.stage1_share:.0%} of the budget; stage 2 starts "
      "from its params with a fresh optimizer on every aligned trace in full rows. The single "
      "mixed stage is section 1's aligned run (every aligned trace, full rows, whole budget).")
  section.figures.append(plots.pass1_by_difficulty(
      "curriculum", "pass@1 by difficulty (mean over seeds; bars: sd)", groups, LABELS))
  section.notes += missing_note(results["phases"].get("curriculum_stage1", []) +
                                results["phases"].get("curriculum_stage2", []))
  return section
