"""Sweep definitions: grid and seeded random points over dotted config overrides, derived
fields, deterministic point names, and the resolved config of each point.

A sweep file `configs/sweeps/<name>.py` exports `get_sweep() -> Sweep` (or a plain list of
override dicts):

    def get_sweep():
      return sweep.Sweep(
          points=sweep.grid({"optim.learning_rate": [1e-3, 3e-3], "train.batch_size": [4, 8]}),
          derived={"optim.warmup_steps": lambda c: max(1, c.train.num_steps // 10)},
          metric="eval/loss", goal="min")

A point is exactly a reproducible command: the base `--config=file.py:variant` plus one
`--config.a.b=value` per override and per derived field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

Overrides = Mapping[str, Any]  # dotted config path -> value


@dataclasses.dataclass(frozen=True)
class Uniform:
  low: float
  high: float

  def sample(self, rng: np.random.Generator) -> float:
    return _round(rng.uniform(self.low, self.high))


@dataclasses.dataclass(frozen=True)
class LogUniform:
  low: float
  high: float

  def __post_init__(self):
    if not 0 < self.low < self.high:
      raise ValueError(f"LogUniform needs 0 < low < high, got {self.low}, {self.high}")

  def sample(self, rng: np.random.Generator) -> float:
    return _round(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


@dataclasses.dataclass(frozen=True)
class Choice:
  values: tuple

  def sample(self, rng: np.random.Generator) -> Any:
    return _python(self.values[int(rng.integers(len(self.values)))])


def _round(x: float) -> float:
  # 3 significant digits: sampled values read well in names and tables and print exactly.
  return float(f"{x:.3g}")


def _python(value: Any) -> Any:
  return value.item() if isinstance(value, np.generic) else value


def grid(axes: Mapping[str, Sequence[Any]]) -> list[dict]:
  """Every combination of `axes` values (the first axis varies slowest)."""
  for key, values in axes.items():
    if isinstance(values, (str, bytes)) or not len(values):
      raise ValueError(f"grid axis {key!r} needs a non-empty list of values")
  keys = list(axes)
  return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))]


def random(space: Mapping[str, Any], *, num: int, seed: int) -> list[dict]:
  """`num` points drawn from `space` (Uniform | LogUniform | Choice | list = choice) with a
  seeded generator: the same seed gives the same points."""
  if num < 1:
    raise ValueError(f"random sweep needs num >= 1, got {num}")
  rng = np.random.default_rng(seed)
  dists = {k: Choice(tuple(v)) if isinstance(v, (list, tuple)) else v for k, v in space.items()}
  return [{k: d.sample(rng) for k, d in dists.items()} for _ in range(num)]


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Points (dotted overrides) on top of a base config; `derived` fields are computed from each
  point's resolved config; `metric` (from metrics.jsonl) is plotted, best by `goal`."""
  points: tuple[dict, ...]
  derived: Mapping[str, Callable[[ml_collections.ConfigDict], Any]] = dataclasses.field(
      default_factory=dict)
  metric: str = "loss/ce"
  goal: str = "min"  # min | max
  report: tuple[str, ...] = ()  # further metrics in the results table

  def __post_init__(self):
    object.__setattr__(self, "points", tuple(dict(p) for p in self.points))
    if not self.points:
      raise ValueError("a sweep needs at least one point")
    if self.goal not in ("min", "max"):
      raise ValueError(f"sweep goal={self.goal!r} must be min or max")
    clash = {k for p in self.points for k in p} & set(self.derived)
    if clash:
      raise ValueError(f"fields {sorted(clash)} are both swept and derived")

  @property
  def metrics(self) -> tuple[str, ...]:
    return (self.metric, *(m for m in self.report if m != self.metric))

  @property
  def swept_fields(self) -> list[str]:
    return sorted({k for p in self.points for k in p})


def load_sweep(path: str | Path) -> Sweep:
  """`get_sweep()` of a sweep file; a returned list of dicts becomes `Sweep(points=...)`."""
  path = Path(path)
  spec = importlib.util.spec_from_file_location(f"_sweep_{path.stem}", path)
  if spec is None or not path.exists():
    raise ValueError(f"--sweep={path}: no such file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = module.get_sweep()
  return out if isinstance(out, Sweep) else Sweep(points=tuple(out))


def load_config(base: str) -> ml_collections.ConfigDict:
  """'configs/sft.py:smoke' -> get_config('smoke') of that file (what --config= loads)."""
  path, _, arg = base.partition(":")
  spec = importlib.util.spec_from_file_location(f"_config_{Path(path).stem}", path)
  if spec is None or not Path(path).exists():
    raise ValueError(f"--base={base}: no config file {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def apply(config: ml_collections.ConfigDict, overrides: Overrides) -> None:
  """Set dotted fields in place; unknown fields raise naming the field."""
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      if part not in node:
        raise ValueError(f"sweep field {key!r}: the config has no {part!r}")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"sweep field {key!r}: the config has no {leaf!r}")
    node[leaf] = value  # a shared FieldReference (batch size) moves all its users


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  overrides: dict  # swept fields
  derived: dict  # computed fields (values)
  config: ml_collections.ConfigDict  # resolved

  @property
  def all_overrides(self) -> dict:
    return {**self.overrides, **self.derived}


def expand(sweep: Sweep, base: str) -> list[Point]:
  """Resolve every point: base config + overrides, then the derived fields from the result."""
  points = []
  for overrides in sweep.points:
    config = load_config(base)
    apply(config, overrides)
    derived = {k: _python(fn(config)) for k, fn in sweep.derived.items()}
    apply(config, derived)
    points.append(Point(point_name(overrides), dict(overrides), derived, config))
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ValueError("the sweep repeats a point (identical overrides)")
  return points


def point_name(overrides: Overrides) -> str:
  """'batch_size=8,learning_rate=0.003,3f2a9c1e': the last part of each dotted key with its
  value, in key order, plus a hash of the full overrides (unique even when last parts clash)."""
  canonical = json.dumps({k: overrides[k] for k in sorted(overrides)}, sort_keys=True)
  digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
  parts = [f"{k.rsplit('.', 1)[-1]}={format_value(overrides[k])}" for k in sorted(overrides)]
  readable = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(parts))[:100]
  return f"{readable},{digest}" if readable else digest


def format_value(value: Any) -> str:
  """A value as `--config.a.b=` parses it back."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return repr(value)
  return str(value)


def command_args(base: str, overrides: Overrides) -> list[str]:
  return [f"--config={base}", *(f"--config.{k}={format_value(v)}" for k, v in overrides.items())]
