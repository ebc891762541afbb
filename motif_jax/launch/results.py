"""Sweep results: one row per point from its metrics.jsonl and status, written as results.csv,
results.md and a PNG of the swept metric against each swept field."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from motif_jax.launch import points as points_io


def metric_summary(metrics_file: Path, names: Sequence[str], goal: str) -> dict[str, float]:
  """`final/<name>` (last logged value) and `best/<name>` (min or max by `goal`) per metric."""
  values: dict[str, list[float]] = {name: [] for name in names}
  try:
    lines = metrics_file.read_text().splitlines()
  except FileNotFoundError:
    lines = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a crash
    for name in names:
      if isinstance(record.get(name), (int, float)) and math.isfinite(record[name]):
        values[name].append(float(record[name]))
  best = min if goal == "min" else max
  out = {}
  for name, seq in values.items():
    out[f"final/{name}"] = seq[-1] if seq else math.nan
    out[f"best/{name}"] = best(seq) if seq else math.nan
  return out


def collect(point_dirs: Sequence[Path], *, fields: Sequence[str], metrics: Sequence[str],
            goal: str) -> list[dict]:
  """One row per point: name, status, wall_s, the swept fields, final/best metrics."""
  rows = []
  for point_dir in point_dirs:
    point = points_io.read_json(point_dir / points_io.POINT_FILE)
    status = points_io.read_json(point_dir / points_io.STATUS_FILE) or {}
    row = {"point": point_dir.name, "status": points_io.state(point_dir),
           "wall_s": status.get("wall_s", math.nan)}
    row.update({f: point["overrides"].get(f, "") for f in fields})
    row.update(metric_summary(point_dir / "metrics.jsonl", metrics, goal))
    rows.append(row)
  return rows


def _text(value) -> str:
  if isinstance(value, float):
    return "" if math.isnan(value) else f"{value:.6g}"
  return str(value)


def write_csv(rows: Sequence[dict], path: Path) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: _text(v) for k, v in row.items()} for row in rows)


def write_markdown(rows: Sequence[dict], path: Path, *, metric: str, goal: str) -> None:
  header = list(rows[0])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_text(row[k]) for k in header) + " |" for row in rows]
  scored = [r for r in rows if not math.isnan(r[f"best/{metric}"])]
  if scored:
    pick = (min if goal == "min" else max)(scored, key=lambda r: r[f"best/{metric}"])
    lines += ["", f"Best {metric} ({goal}): {_text(pick[f'best/{metric}'])} at `{pick['point']}`."]
  path.write_text("\n".join(lines) + "\n")


def plot(rows: Sequence[dict], path: Path, *, fields: Sequence[str], metric: str) -> None:
  """final/<metric> against each swept field (one panel per field, log axis for wide ranges)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  if not fields:  # a single point or a list of unswept runs: the metric per point
    rows = [dict(r, point=i) for i, r in enumerate(rows)]
    fields = ("point",)
  fig, axes = plt.subplots(1, len(fields), figsize=(4 * len(fields), 3.2), squeeze=False)
  for ax, field in zip(axes[0], fields):
    pairs = [(r[field], r[f"final/{metric}"]) for r in rows
             if isinstance(r[field], (int, float)) and not isinstance(r[field], bool)
             and not math.isnan(r[f"final/{metric}"])]
    if pairs:
      xs, ys = zip(*pairs)
      ax.scatter(xs, ys)
      if min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(field)
    ax.set_ylabel(f"final {metric}")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_all(rows: Sequence[dict], workdir: Path, *, fields: Sequence[str], metric: str,
              goal: str) -> dict[str, Path]:
  out = {"csv": workdir / "results.csv", "md": workdir / "results.md",
         "png": workdir / "results.png"}
  write_csv(rows, out["csv"])
  write_markdown(rows, out["md"], metric=metric, goal=goal)
  plot(rows, out["png"], fields=fields, metric=metric)
  return out
