"""PNG figures of the report (matplotlib, Agg backend), returned as bytes."""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

from motif_jax.reproduce.collect import PASS1, difficulties, per_difficulty


@dataclasses.dataclass
class Figure:
  name: str  # file stem: report/<name>.png
  caption: str
  png: bytes


def _pyplot():
  import matplotlib  # noqa: PLC0415 (heavy; only when a report is written)
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # noqa: PLC0415
  return plt


def _png(fig) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=90)
  _pyplot().close(fig)
  return buf.getvalue()


def pass1_by_difficulty(name: str, caption: str, groups: Mapping[str, Sequence[dict]],
                        labels: Mapping[str, str]) -> Figure:
  """Grouped bars: pass@1 per difficulty (and overall) per condition, sd error bars."""
  plt = _pyplot()
  diffs = difficulties([p for ps in groups.values() for p in ps])
  columns = [*diffs, "all"]
  fig, ax = plt.subplots(figsize=(7.5, 3.4))
  width = 0.8 / max(len(groups), 1)
  for i, (cond, ps) in enumerate(groups.items()):
    means, sds = [], []
    for col in columns:
      vals = [p["final"][PASS1] if col == "all" else per_difficulty(p["final"], col) for p in ps]
      vals = [v for v in vals if not math.isnan(v)]
      means.append(float(np.mean(vals)) if vals else 0.0)
      sds.append(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
    x = np.arange(len(columns)) + (i - (len(groups) - 1) / 2) * width
    ax.bar(x, means, width, yerr=sds, capsize=2, label=labels.get(cond, cond))
  ax.set_xticks(np.arange(len(columns)), columns)
  ax.set_xlabel("difficulty (operations)")
  ax.set_ylabel("greedy pass@1")
  ax.set_ylim(0, 1)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=7, loc="upper right")
  fig.tight_layout()
  return Figure(name, caption, _png(fig))


def curves(name: str, caption: str, series: Mapping[str, Sequence[Mapping[str, list]]],
           metrics: Sequence[tuple[str, str]], labels: Mapping[str, str]) -> Figure:
  """One panel per (metric, title); one line per condition: the mean over its seeds at each
  step that every seed logged."""
  plt = _pyplot()
  cols = min(3, len(metrics))
  rows = math.ceil(len(metrics) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
  for ax, (metric, title) in zip(axes.flat, metrics):
    for cond, runs in series.items():
      per_run = [dict(map(tuple, run.get(metric, []))) for run in runs]
      steps = sorted(set.intersection(*(set(r) for r in per_run))) if per_run else []
      if steps:
        ax.plot(steps, [np.mean([r[s] for r in per_run]) for s in steps], marker=".",
                label=labels.get(cond, cond))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(metrics):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  fig.tight_layout()
  return Figure(name, caption, _png(fig))


def bars(name: str, caption: str, values: Mapping[str, Mapping[str, float]], ylabel: str,
         *, log: bool = False) -> Figure:
  """Grouped bars: values[group][series]."""
  plt = _pyplot()
  groups = list(values)
  series = sorted({s for g in values.values() for s in g})
  fig, ax = plt.subplots(figsize=(7, 3.2))
  width = 0.8 / max(len(series), 1)
  for i, s in enumerate(series):
    x = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
    ax.bar(x, [values[g].get(s, 0.0) for g in groups], width, label=s)
  ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
  ax.set_ylabel(ylabel)
  if log:
    ax.set_yscale("log")
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return Figure(name, caption, _png(fig))
