"""The study end to end: plan the phases, launch what is left, collect, compute the sections,
write DIR/report.md, DIR/report.html and DIR/results.json (every number the report shows).

    reproduce(study_cfg, config_file="configs/reproduce.py", workdir=DIR, launcher="local")
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from motif_jax.reproduce import collect, launch, phases as phases_lib, report, sft_sections
from motif_jax.reproduce import probe_section as probe_section_lib
from motif_jax.reproduce import memory_section, rl_section
from motif_jax.reproduce.memory_section import memory
from motif_jax.reproduce.rl_section import rl
from motif_jax.reproduce.sections import Section

TITLE = "The Motif recipe's lessons at small scale"


def part_commands(part: str, phase_list, options: launch.LaunchOptions, command: str
                  ) -> list[str]:
  """The study command restricted to `part`, then each of its phases' own sweep command."""
  words = [w for w in command.split(" ") if not w.startswith("--config.study.parts=")]
  out = [" ".join([*words, f"--config.study.parts={part}"])]
  for phase in phase_list:
    if phase.part == part:
      out.append(launch.command(launch.sweep_run(phase, options)))
  return out


def not_run(number: int, title: str, claim: str, reason: str) -> Section:
  return Section(number, title, claim, status="not run", reason=reason)


def probe_section(results: dict, study, commands: list[str]) -> Section:
  if importlib.util.find_spec(phases_lib.PROBE_MODULE) is None:
    return not_run(3, probe_section_lib.TITLE, probe_section_lib.CLAIM,
                   f"{phases_lib.PROBE_MODULE} (the teacher probe, issue 19) is not in this "
                   "checkout, so the probe's measures could not be computed.")
  return probe_section_lib.section(results, study, commands)


def sections_for(results: dict, study, commands: dict[str, list[str]]) -> list[Section]:
  parts = set(str(study.parts).split(","))
  reason = "not in study.parts for this run"
  out = []
  if "data" in parts:
    out += [sft_sections.alignment(results, study, commands["data"]),
            sft_sections.verification(results, study, commands["data"])]
  else:
    out += [not_run(1, sft_sections.TITLE_ALIGNMENT, sft_sections.CLAIM_ALIGNMENT, reason),
            not_run(2, sft_sections.TITLE_VERIFY, sft_sections.CLAIM_VERIFY, reason)]
  out.append(probe_section(results, study, commands["probe"]) if "probe" in parts else
             not_run(3, probe_section_lib.TITLE, probe_section_lib.CLAIM, reason))
  out.append(sft_sections.curriculum(results, study, commands["curriculum"])
             if "curriculum" in parts else
             not_run(4, sft_sections.TITLE_CURRICULUM, sft_sections.CLAIM_CURRICULUM, reason))
  out.append(rl(results, study, commands["rl"]) if "rl" in parts else
             not_run(5, rl_section.TITLE, rl_section.CLAIM, reason))
  out.append(memory(results, commands["memory"]) if "memory" in parts else
             not_run(6, memory_section.TITLE, memory_section.CLAIM, reason))
  return out


def meta_for(study, results: dict, status: dict[str, str], wall_s: float, command: str) -> dict:
  sft_points = [p for name in ("data", "curriculum_stage1", "curriculum_stage2")
                for p in results["phases"].get(name, [])]
  steps = [p["steps"] for p in sft_points if p["steps"]]
  run_walls = [p["wall_s"] for ps in results["phases"].values() for p in ps if p["wall_s"]]
  intro = [
      f"Made {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `{command}`; "
      f"this invocation took {wall_s / 60:.1f} min, the runs it reports "
      f"{sum(run_walls) / 60:.1f} min of run time in all.",
      f"Scale: {study.seeds} seeds per SFT condition, {study.rl_seeds} per RL condition; every "
      f"SFT run trains on {study.sft_budget_tokens:,} completion tokens (counted: its steps come "
      f"from its own data pipeline, {min(steps, default=0)}-{max(steps, default=0)} steps; the "
      "tables give the tokens each run logged). Model, ladder and held-out set: "
      "configs/reproduce.py (run=sft, run=rl).",
      "Each comparison pairs two conditions over the same seeds (same initial params, shuffle "
      f"seed and held-out problems): mean difference, {round(100 * study.confidence)}% t "
      "interval and paired t-test. Verdict rules (motif_jax/reproduce/stats.py): supported when "
      "the interval of the difference lies above 0; not supported when it lies below 0 or "
      f"inside ±margin (pass@1 margin {study.accuracy_margin}); inconclusive otherwise, or when "
      "every run of both sides measured the same value (a floor: nothing solved).",
      "Phases: " + "; ".join(f"{k}: {v}" for k, v in status.items()) + ".",
  ]
  return {"title": TITLE, "intro": intro}


def reproduce(study, *, config_file: str, study_arg: str, workdir: str, launcher: str = "local",
              command: str = "", log: Callable[[str], None] = print) -> dict:
  """Run (or resume) the study; returns {"sections", "paths", "results"}."""
  start = time.perf_counter()
  options = launch.LaunchOptions(config_file=config_file, variant=study.variant,
                                 workdir=str(Path(workdir).absolute()), launcher=launcher,
                                 parallel=study.parallel)
  phase_list = phases_lib.plan(study, config_file, options.workdir, log=log)
  status = launch.run_phases(phase_list, options, log=log)
  results = collect.collect(phase_list, options.workdir)
  config = f"--config={config_file}" + (f":{study_arg}" if study_arg else "")
  command = command or (f"python -m experiments.reproduce --workdir={options.workdir} {config} "
                        f"--launcher={launcher}")
  commands = {part: part_commands(part, phase_list, options, command)
              for part in phases_lib.PARTS}
  sections = sections_for(results, study, commands)
  meta = meta_for(study, results, status, time.perf_counter() - start, command)
  paths = report.write(options.workdir, sections, meta)
  Path(options.workdir, "results.json").write_text(json.dumps(
      {"results": results, "verdicts": [
          {"section": s.number, "status": s.status, "reason": s.reason,
           "verdicts": [dict(zip(("lesson", "measured_by", "verdict", "numbers"), v))
                        for v in report.verdict_lines(s)]} for s in sections]},
      indent=1, default=_json_default))
  log(f"report: {paths['md']} and {paths['html']}")
  for s in sections:
    for lesson, _, label, reason in report.verdict_lines(s):
      log(f"  {s.number}. {label:<13} {lesson}: {reason}")
    if s.status == "not run":
      log(f"  {s.number}. not run       {s.title}: {s.reason}")
  return {"sections": sections, "paths": paths, "results": results}


def _json_default(value):
  if dataclasses.is_dataclass(value):
    return dataclasses.asdict(value)
  if isinstance(value, float) and math.isnan(value):
    return None
  return str(value)
