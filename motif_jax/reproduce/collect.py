"""What the finished runs measured, as plain JSON-able data the sections are computed from.

    results = collect(phases, workdir)   # {"phases": {name: [point, ...]}, "memory": {...}}

A point: condition, seed, status, dir, `final` (the last `eval/...` scalars of its
metrics.jsonl: the end-of-run held-out evaluation), `tokens` (completion tokens trained on,
counted from every logged step), `budget` (the tokens it was sized to), `steps`, and `curves`
(metric -> [[step, value], ...] for the `CURVES` metrics that it logged).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from motif_jax.launch import points as points_io
from motif_jax.reproduce import budget
from motif_jax.reproduce.study import Phase

# RL curves (section 5): rollout reward, held-out accuracy, entropy, clip fractions, length.
CURVES = ("rl/reward", "rollout/reward", "eval/accuracy", "entropy", "clip/low", "clip/high",
          "rl/response_length", "rollout/response_length", "filter/keep_rate", "adv/std")
MEMORY_FILE = "memory.json"
PROBE_FILE = "probe.json"
PASS1 = "eval/accuracy"  # greedy pass@1 on the held-out set (the lessons' measure)


def read_lines(metrics_file: Path) -> list[dict]:
  try:
    text = Path(metrics_file).read_text()
  except FileNotFoundError:
    return []
  out = []
  for line in text.splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      continue  # a line cut short by a crash
  return out


def final_eval(lines: list[dict]) -> dict[str, float]:
  """The last line with `eval/accuracy` (the end-of-run evaluation), its eval/* scalars."""
  for line in reversed(lines):
    if "eval/accuracy" in line:
      return {k: float(v) for k, v in line.items() if k.startswith("eval/")}
  return {}


def curves(lines: list[dict], names=CURVES) -> dict[str, list[list[float]]]:
  """metric -> [[step, value], ...] in step order, the last write of a step winning."""
  out: dict[str, dict[int, float]] = {}
  for line in lines:
    for name in names:
      value = line.get(name)
      if isinstance(value, (int, float)) and math.isfinite(value):
        out.setdefault(name, {})[int(line["step"])] = float(value)
  return {k: [[s, v] for s, v in sorted(d.items())] for k, d in out.items()}


def difficulties(points: Sequence[dict]) -> list[str]:
  """'d1', 'd2', ... present in any point's final evaluation."""
  found = {k.rsplit("/", 1)[-1] for p in points for k in p["final"]
           if k.startswith(PASS1 + "/")}
  return sorted(found, key=lambda d: int(d[1:]))


def per_difficulty(final: dict, difficulty: str) -> float:
  """pass@1 at one difficulty, averaged over domains (each domain has as many problems)."""
  values = [v for k, v in final.items()
            if k.startswith(PASS1 + "/") and k.rsplit("/", 1)[-1] == difficulty]
  return sum(values) / len(values) if values else math.nan


def collect_point(phase: Phase, spec, workdir: Path) -> dict:
  point_dir = phase.point_dir(workdir, spec)
  lines = read_lines(point_dir / "metrics.jsonl")
  status = points_io.state(point_dir) if (point_dir / points_io.POINT_FILE).exists() else "pending"
  return {"condition": spec.condition, "seed": spec.seed, "status": status,
          "dir": str(point_dir), "final": final_eval(lines),
          "tokens": budget.trained_tokens(point_dir / "metrics.jsonl"), "budget": spec.budget,
          "steps": spec.overrides.get("train.num_steps"), "curves": curves(lines),
          "wall_s": (points_io.read_json(point_dir / points_io.STATUS_FILE) or {}).get("wall_s")}


def collect(phases: list[Phase], workdir: str | Path) -> dict:
  workdir = Path(workdir).absolute()
  out: dict = {"phases": {}}
  for phase in phases:
    out["phases"][phase.name] = [collect_point(phase, spec, workdir) for spec in phase.points]
    if phase.part == "probe":
      out["probe"] = [points_io.read_json(Path(p["dir"]) / PROBE_FILE)
                      for p in out["phases"][phase.name] if p["status"] == "done"]
    if phase.part == "memory":
      point = out["phases"][phase.name][0]
      out["memory"] = points_io.read_json(Path(point["dir"]) / MEMORY_FILE)
  return out
