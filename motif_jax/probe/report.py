"""probe.md and the plots (each cheap measure against the SFT probe's score)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from motif_jax.probe import rank

PLOTS = {m: f"{m}_vs_probe.png" for m in rank.CHEAP}


def _fmt(value: Any) -> str:
  if value is None:
    return "n/a"
  return f"{value:.3f}" if isinstance(value, float) else str(value)


def to_markdown(result: dict[str, Any]) -> str:
  cands = {c["name"]: c for c in result["candidates"]}
  ranks = result["ranks"]
  k = rank.largest_k(result["candidates"][0])
  lines = [f"# Teacher probe: {len(cands)} candidates against `{result['student']}`", "",
           result["recommendation"], "",
           f"Each candidate fine-tuned the student on {result['token_budget']:,} completion "
           f"tokens x {result['epochs']} epochs (counted: "
           + ", ".join(f"{n} {c['trained_tokens']:,}" for n, c in cands.items())
           + f"), then sampled {result['eval']['num_samples']} completions per prompt of "
           f"{result['eval']['prompts']} held-out prompts (`{result['eval_data']}`).", "",
           f"## Ranking (rank 1 = best on that measure; the probe ranks by {result['rank_by']})",
           "",
           "| candidate | (a) NLL | (b) style distance | (c) verify rate | (d) probe pass@1 | "
           f"pass@{k} | mean reward | format errors |",
           "|---|---|---|---|---|---|---|---|"]
  for name in result["ranking"]:
    c = cands[name]
    lines.append(
        f"| {name} | {c['nll']:.3f} (#{ranks['nll'][name]:g}) | {c['style_distance']:.2f} "
        f"(#{ranks['style_distance'][name]:g}) | {c['verify_rate']:.3f} "
        f"(#{ranks['verify_rate'][name]:g}) | {c['probe_pass@1']:.3f} "
        f"(#{ranks['probe'][name]:g}) | {c[f'probe_pass@{k}']:.3f} | "
        f"{c['probe_mean_reward']:.3f} | {c['probe_format_error_rate']:.3f} |")
  if result.get("student_eval"):
    s = result["student_eval"]
    lines.append(f"| (student, no probe SFT) | | | | {s['probe_pass@1']:.3f} | "
                 f"{s[f'probe_pass@{k}']:.3f} | {s['probe_mean_reward']:.3f} | "
                 f"{s['probe_format_error_rate']:.3f} |")
  lines += ["", "## Rank correlation of each cheap measure with the probe", "",
            "Measures oriented so that larger is better (-NLL, -style distance, verify rate); "
            "+1 = the same order as the probe, n/a = undefined (a constant measure).", "",
            "| measure | Spearman | Kendall tau-b |", "|---|---|---|"]
  for m, values in result["correlations"].items():
    lines.append(f"| {rank.LABELS[m]} | {_fmt(values['spearman'])} | "
                 f"{_fmt(values['kendall'])} |")
  levels = sorted({lv for c in cands.values() for lv in c["probe_by_difficulty"]},
                  key=lambda t: (len(t), t))
  lines += ["", f"## Probe pass@1 / pass@{k} by difficulty", "",
            "| candidate | " + " | ".join(f"d{lv}" for lv in levels) + " |",
            "|---" * (len(levels) + 1) + "|"]
  for name in result["ranking"]:
    by = cands[name]["probe_by_difficulty"]
    cells = [f"{by[lv]['pass@1']:.2f} / {by[lv][f'pass@{k}']:.2f}" if lv in by else ""
             for lv in levels]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in PLOTS.values()), ""]
  return "\n".join(lines)


def plot(workdir: Path, result: dict[str, Any]) -> None:
  """One scatter per cheap measure: x = the measure, y = the probe score it is ranked by."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt  # noqa: PLC0415
  cands = result["candidates"]
  for m, filename in PLOTS.items():
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs, ys = [c[m] for c in cands], [c[f"probe_{result['rank_by']}"] for c in cands]
    ax.scatter(xs, ys, color="tab:blue")
    for i, (c, x, y) in enumerate(zip(cands, xs, ys)):  # staggered: equal scores overlap
      ax.annotate(c["name"], (x, y), textcoords="offset points", xytext=(4, 4 + 10 * i),
                  fontsize=8)
    rho = result["correlations"][m]["spearman"]
    ax.set(xlabel=rank.LABELS[m], ylabel=f"(d) probe {result['rank_by']}",
           title=f"{rank.LABELS[m]} vs probe (Spearman {_fmt(rho)})")
    fig.tight_layout()
    fig.savefig(workdir / filename, dpi=80)
    plt.close(fig)
