"""What curation did, written to a workdir: report.json, report.md and PNG histograms.

Counts are kept and dropped per filter and reason, per domain and per source (the teacher, for
the toy corpus); histograms compare each trace statistic before filtering and after.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from motif_jax.data.curate import Curation
from motif_jax.data.traces import Scored

STATS: dict[str, Callable[[Scored], float | None]] = {
    "response_tokens": lambda item: item.stats.response_tokens,
    "reasoning_ratio": lambda item: item.stats.think_tokens / max(item.stats.answer_tokens, 1),
    "num_steps": lambda item: item.stats.num_steps,
    "mean_step_tokens": lambda item: item.stats.mean_step_tokens,
    "numbered_fraction": lambda item: item.stats.numbered_fraction,
    "nll": lambda item: item.stats.nll,
}


def _group_table(curation: Curation, key: str) -> dict[str, dict[str, Any]]:
  """{group: {input, kept, dropped_by: {filter: n}}} for key "domain" or "source"."""
  inputs = collections.Counter(getattr(item.record, key) for item in curation.scored)
  kept = collections.Counter(getattr(item.record, key) for item in curation.kept)
  out = {}
  for group in sorted(inputs):
    dropped_by = {f.name: f.counts.by(key).get(group, {}).get("dropped", 0)
                  for f in curation.filters}
    out[group] = dict(input=inputs[group], kept=kept[group], dropped_by=dropped_by)
  return out


def _describe(values: Sequence[float]) -> dict[str, float]:
  if not values:
    return {}
  v = np.asarray(values, np.float64)
  return dict(count=len(v), mean=float(v.mean()), p10=float(np.percentile(v, 10)),
              p50=float(np.median(v)), p90=float(np.percentile(v, 90)))


def _values(items: Sequence[Scored], stat: str) -> list[float]:
  return [v for v in map(STATS[stat], items) if v is not None]


def summarize(curation: Curation) -> dict[str, Any]:
  return dict(
      inputs={path: c.to_json() for path, c in curation.parse_counts.items()},
      records=len(curation.scored),
      invalid=sum(sum(c.invalid.values()) for c in curation.parse_counts.values()),
      kept=len(curation.kept),
      dropped=len(curation.scored) - len(curation.kept),
      filters=[dict(name=f.name, **f.counts.to_json()) for f in curation.filters],
      by_domain=_group_table(curation, "domain"),
      by_source=_group_table(curation, "source"),
      style_profile=curation.profile.to_json() if curation.profile else None,
      stats={stat: dict(before=_describe(_values(curation.scored, stat)),
                        after=_describe(_values(curation.kept, stat))) for stat in STATS},
  )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def to_markdown(summary: dict[str, Any]) -> str:
  lines = ["# Data curation report", "",
           f"{summary['records']} records parsed ({summary['invalid']} invalid items skipped); "
           f"**{summary['kept']} kept**, {summary['dropped']} dropped.", "", "## Inputs", ""]
  lines += _table(["input", "valid", "invalid by reason"],
                  [(p, c["valid"], c["invalid"] or "-") for p, c in summary["inputs"].items()])
  lines += ["", "## Filters (in order)", ""]
  lines += _table(["filter", "seen", "kept", "dropped", "reasons"],
                  [(f["name"], f["seen"], f["kept"], f["seen"] - f["kept"],
                    ", ".join(f"{r} {n}" for r, n in f["dropped"].items()) or "-")
                   for f in summary["filters"]])
  names = [f["name"] for f in summary["filters"]]
  for key in ("by_source", "by_domain"):
    lines += ["", f"## {key.replace('_', ' ').capitalize()}", ""]
    lines += _table([key[3:], "input", "kept", *[f"dropped: {n}" for n in names]],
                    [(g, v["input"], v["kept"], *[v["dropped_by"][n] for n in names])
                     for g, v in summary[key].items()])
  lines += ["", "## Trace statistics (mean before -> after; histograms in hist_*.png)", ""]
  lines += _table(["statistic", "before", "after"],
                  [(s, f"{v['before']['mean']:.2f}" if v["before"] else "-",
                    f"{v['after']['mean']:.2f}" if v["after"] else "-")
                   for s, v in summary["stats"].items() if v["before"]])
  return "\n".join(lines) + "\n"


def plot_histograms(workdir: str, curation: Curation) -> list[str]:
  """One PNG per statistic: before (all parsed traces) and after (kept) overlaid."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt  # noqa: PLC0415
  paths = []
  for stat in STATS:
    before, after = _values(curation.scored, stat), _values(curation.kept, stat)
    if not before:
      continue
    bins = np.histogram_bin_edges(before, bins=40)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(before, bins=bins, alpha=0.5, label=f"before ({len(before)})")
    ax.hist(after, bins=bins, alpha=0.7, label=f"after ({len(after)})")
    ax.set(xlabel=stat, ylabel="traces", title=f"{stat}: before and after filtering")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(workdir, f"hist_{stat}.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    paths.append(path)
  return paths


def write_report(workdir: str, curation: Curation) -> dict[str, Any]:
  """report.json, report.md and hist_*.png under `workdir`; returns the summary."""
  os.makedirs(workdir, exist_ok=True)
  summary = summarize(curation)
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(to_markdown(summary))
  plot_histograms(workdir, curation)
  return summary
