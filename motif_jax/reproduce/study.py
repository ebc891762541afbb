"""The study's runs: conditions, seeds and the sweeps (phases) that run them.

A phase is one sweep of the sweep launcher (`motif_jax.launch.driver`) in `DIR/<phase>/`: its
points are literal config overrides written to `DIR/<phase>/sweep_points.py`, on the base
`configs/reproduce.py:<variant>,run=<sft|rl|memory>`, so each phase reruns on its own with

    python -m experiments.sweep --sweep=DIR/<phase>/sweep_points.py --base=... --workdir=DIR/<phase>

and `--launcher=slurm` runs it on a cluster. Phases that start from another phase's runs (the
second curriculum stage, RL from SFT) name it in `needs` and take those runs' workdirs as
`train.init_from` / `rl.init_from`.

SFT points get the number of steps their own data pipeline needs to reach the study's token
budget (`budget.steps_for_budget`), so conditions whose traces differ in length still train on
the same number of completion tokens.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from motif_jax.launch import sweep as sweep_lib

FULL_FILTERS = "format,verify,verbosity,granularity,style,dedup"


@dataclasses.dataclass(frozen=True)
class Condition:
  name: str
  label: str  # how the report names it
  overrides: dict  # dotted config overrides (besides seed, steps and init_from)


DATA_CONDITIONS = (
    Condition("aligned", "aligned teacher, verified",
              {"data.inputs": "toy:aligned", "data.filters.order": "format,verify"}),
    Condition("misaligned", "misaligned teacher, verified",
              {"data.inputs": "toy:misaligned", "data.filters.order": "format,verify"}),
    Condition("mix_unfiltered", "both teachers, unfiltered",
              {"data.inputs": "toy", "data.filters.order": ""}),
    Condition("mix_filtered", "both teachers, alignment filters",
              {"data.inputs": "toy", "data.filters.order": FULL_FILTERS}),
    Condition("unverified", "misaligned teacher, unverified",
              {"data.inputs": "toy:misaligned", "data.filters.order": "format"}),
)

RL_CONDITIONS = (
    Condition("recipe", "band [0.1, 0.9], replay 0.5, clip 0.2/0.28", {}),
    Condition("no_band", "no pass-rate band, no online filter",
              {"rl.pass_rate_low": 0.0, "rl.pass_rate_high": 1.0, "rl.online_filter": False}),
    Condition("no_replay", "no replay", {"rl.replay_fraction": 0.0}),
    Condition("symmetric", "symmetric clip 0.2/0.2", {"rl.eps_high": 0.2}),
)


@dataclasses.dataclass(frozen=True)
class PointSpec:
  condition: str
  seed: int
  overrides: dict  # everything: condition, seed, steps, init_from
  budget: int = 0  # completion tokens this SFT point is sized to (0 = not an SFT budget)

  @property
  def name(self) -> str:
    return sweep_lib.point_name(self.overrides)


@dataclasses.dataclass(frozen=True)
class Phase:
  name: str  # its directory under the study workdir
  part: str  # data | curriculum | rl | memory | probe
  experiment: str  # experiments.<name>, or a module path
  run: str  # the base's run=...
  points: tuple[PointSpec, ...]
  needs: tuple[str, ...] = ()  # phases whose runs this one starts from

  def point_dir(self, workdir: Path, spec: PointSpec) -> Path:
    return Path(workdir).absolute() / self.name / spec.name


def base(config_file: str, variant: str, run: str) -> str:
  return f"{config_file}:{','.join(filter(None, (variant, f'run={run}')))}"


def seed_overrides(seed: int) -> dict:
  return {"train.seed": seed, "data.seed": seed}


def find(phase: Phase, condition: str, seed: int) -> PointSpec:
  for spec in phase.points:
    if spec.condition == condition and spec.seed == seed:
      return spec
  raise KeyError(f"phase {phase.name} has no point {condition}/seed {seed}")
