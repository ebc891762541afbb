"""The study's phases from its config: which runs, with which overrides, sized to which budget.

    phases = plan(study_cfg, "configs/reproduce.py", workdir)

- `data` (sections 1 and 2): SFT on each data condition (`study.DATA_CONDITIONS`) x seed.
- `curriculum_stage1` then `curriculum_stage2` (section 4): short traces in short rows for
  `curriculum.stage1_share` of the budget, then every trace in full rows for the rest, from the
  stage-1 run's params; the single mixed stage is the `data` part's `aligned` run (every aligned
  trace in full rows for the whole budget), so it is not run twice.
- `rl` (section 5): RL from each seed's `aligned` SFT run, one point per `study.RL_CONDITIONS`.
- `probe` (section 3): the teacher probe (`motif_jax.reproduce.probe_task`) per probe seed,
  when motif_jax.probe (issue 19) exists.
- `memory` (section 6): one point of `motif_jax.reproduce.memory`.

Token budgets are counted (`budget.steps_for_budget`) and cached in `DIR/budget.json`, so a
rerun plans the same points without counting again.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import ml_collections

from motif_jax.launch import points as points_io
from motif_jax.launch import sweep as sweep_lib
from motif_jax.reproduce import budget
from motif_jax.reproduce.study import (DATA_CONDITIONS, RL_CONDITIONS, Condition, Phase,
                                       PointSpec, base, find, seed_overrides)

BUDGET_FILE = "budget.json"
PARTS = ("data", "curriculum", "probe", "rl", "memory")
PROBE_MODULE = "motif_jax.probe"  # the teacher probe (issue 19)


class Budgets:
  """Counted steps per (base, overrides, budget), cached in a JSON file."""

  def __init__(self, path: Path, max_steps: int, log: Callable[[str], None] = print):
    self.path, self.max_steps, self.log = path, max_steps, log
    self.cache = points_io.read_json(path) or {}
    self.records: dict = {}

  def steps(self, base_config: str, overrides: dict, tokens: int) -> int:
    key = json.dumps([base_config, overrides, tokens], sort_keys=True)
    if key not in self.cache:
      config = sweep_lib.load_config(base_config)
      sweep_lib.apply(config, overrides)
      count = budget.steps_for_budget(budget.data_config(config), tokens,
                                      max_steps=self.max_steps, records_cache=self.records)
      self.log(f"budget: {count.steps} steps reach {count.tokens:,} of {tokens:,} tokens "
               f"({count.records} records) for {overrides}")
      self.cache[key] = {"steps": count.steps, "tokens": count.tokens, "records": count.records}
      self.path.parent.mkdir(parents=True, exist_ok=True)
      points_io.write_json(self.path, self.cache)
    return int(self.cache[key]["steps"])


def _sft_point(budgets: Budgets, sft_base: str, condition: Condition, seed: int, tokens: int,
               extra: dict | None = None) -> PointSpec:
  overrides = {**condition.overrides, **seed_overrides(seed), **(extra or {})}
  steps = budgets.steps(sft_base, overrides, tokens)
  return PointSpec(condition.name, seed, {**overrides, "train.num_steps": steps}, budget=tokens)


def plan(study: ml_collections.ConfigDict, config_file: str, workdir: str | Path, *,
         log: Callable[[str], None] = print) -> list[Phase]:
  """Every phase of the parts in `study.parts`, in launch order."""
  workdir = Path(workdir).absolute()
  parts = [p for p in str(study.parts).split(",") if p]
  unknown = sorted(set(parts) - set(PARTS))
  if unknown:
    raise ValueError(f"study.parts has unknown parts {unknown}; accepted: {list(PARTS)}")
  budgets = Budgets(workdir / BUDGET_FILE, study.max_steps, log)
  sft_base = base(config_file, study.variant, "sft")
  seeds = range(study.seeds)
  tokens = int(study.sft_budget_tokens)
  phases: list[Phase] = []
  # The data part runs whenever a later part starts from its runs.
  if {"data", "curriculum", "rl"} & set(parts):
    data = Phase("data", "data", "sft", "sft", tuple(
        _sft_point(budgets, sft_base, c, s, tokens) for c in DATA_CONDITIONS for s in seeds))
    phases.append(data)
  if "curriculum" in parts:
    phases += _curriculum(study, budgets, sft_base, workdir, seeds, tokens)
  if "probe" in parts and importlib.util.find_spec(PROBE_MODULE) is not None:
    phases.append(Phase("probe", "probe", "motif_jax.reproduce.probe_task", "probe", tuple(
        PointSpec("probe", s, {"probe.seed": s, "eval.seed": s, "student_sft.train.seed": s})
        for s in range(study.probe_seeds))))
  if "rl" in parts:
    if not 1 <= study.rl_seeds <= study.seeds:
      raise ValueError(f"study.rl_seeds={study.rl_seeds} must be in [1, study.seeds="
                       f"{study.seeds}]: RL starts from the aligned SFT run of each seed")
    phases.append(_rl(study, config_file, data, workdir))
  if "memory" in parts:
    phases.append(Phase("memory", "memory", "motif_jax.reproduce.memory", "memory",
                        (PointSpec("memory", 0, _memory_overrides(study, config_file)),)))
  return phases


def _memory_overrides(study, config_file: str) -> dict:
  # The sweep launcher's results table needs a swept field: the one point restates its planned
  # sequence length (the name then says which cell it planned).
  memory = sweep_lib.load_config(base(config_file, study.variant, "memory")).memory
  return {"memory.plan_seq_len": int(memory.plan_seq_len)}


def _curriculum(study, budgets: Budgets, sft_base: str, workdir: Path, seeds,
                tokens: int) -> list[Phase]:
  cur = study.curriculum
  if not 0 < cur.stage1_share < 1:
    raise ValueError(f"study.curriculum.stage1_share={cur.stage1_share} must be in (0, 1)")
  aligned = DATA_CONDITIONS[0]
  stage1 = Condition("stage1", "stage 1: short traces, short rows", {
      **aligned.overrides, "data.filters.order": "format,verify,verbosity",
      "data.filters.verbosity.max_tokens": int(cur.stage1_max_tokens),
      "data.seq_len": int(cur.stage1_seq_len)})
  stage2 = Condition("stage2", "two-stage curriculum", dict(aligned.overrides))
  tokens1 = round(tokens * cur.stage1_share)
  phase1 = Phase("curriculum_stage1", "curriculum", "sft", "sft", tuple(
      _sft_point(budgets, sft_base, stage1, s, tokens1) for s in seeds))
  points2 = []
  for s in seeds:
    init = str(phase1.point_dir(workdir, find(phase1, "stage1", s)))
    points2.append(_sft_point(budgets, sft_base, stage2, s, tokens - tokens1,
                              {"train.init_from": init}))
  return [phase1, Phase("curriculum_stage2", "curriculum", "sft", "sft", tuple(points2),
                        needs=("curriculum_stage1",))]


def _rl(study, config_file: str, data: Phase, workdir: Path) -> Phase:
  points = []
  for s in range(study.rl_seeds):
    init = str(data.point_dir(workdir, find(data, "aligned", s)))
    for condition in RL_CONDITIONS:
      overrides = {**condition.overrides, "train.seed": s, "rl.init_from": init}
      points.append(PointSpec(condition.name, s, overrides))
  return Phase("rl", "rl", "rl", "rl", tuple(points), needs=("data",))
