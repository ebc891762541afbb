"""The GPU check's outputs: the targets of issue 15, gpu_results.json, a Markdown section for
docs/gpu_results.md and the short table printed last."""

from __future__ import annotations

import json
from pathlib import Path

GIB = 2**30
TARGET_LENGTH = 8192  # tokens: the targets' length on a GPU (the dry run's shapes are shorter)


def _cases(parts: list[dict], kind: str) -> list[dict]:
  return [c for p in parts for c in p["cases"] if c.get("kind") == kind]


def _target(name: str, goal: str, value: float | None, met: bool | None, note: str = "") -> dict:
  return {"name": name, "goal": goal, "value": value, "met": met, "note": note}


def targets(parts: list[dict], *, dry_run: bool) -> list[dict]:
  """Issue 15's targets from the measured cases; met is None when a figure is missing, and in a
  dry run (CPU figures say nothing about a GPU)."""
  out = []
  ce = {(c["impl"], c["tokens"]): c for c in _cases(parts, "cross_entropy")}
  t = min((tok for _, tok in ce), default=TARGET_LENGTH)
  fused, naive = ce.get(("pallas", t)), ce.get(("reference", t))
  time_ratio = (fused["median_s"] / naive["median_s"]
                if fused and naive and "median_s" in fused and "median_s" in naive else None)
  mem_ratio = (naive["temp_bytes"] / max(fused["temp_bytes"], 1) if fused and naive else None)
  out.append(_target(f"fused CE (pallas) time / naive at T={t}", "<= 1.2", time_ratio,
                     None if time_ratio is None else time_ratio <= 1.2))
  out.append(_target(f"naive / fused CE (pallas) temp memory at T={t}", ">= 20", mem_ratio,
                     None if mem_ratio is None else mem_ratio >= 20))
  attn = {(c["impl"], c["seq"]): c for c in _cases(parts, "attention") if c["segments"] == 1}
  for seq in sorted({s for _, s in attn}) or [TARGET_LENGTH]:
    pallas, cudnn = attn.get(("pallas", seq)), attn.get(("cudnn", seq))
    ratio = (cudnn["median_s"] / pallas["median_s"]
             if pallas and cudnn and "median_s" in pallas and "median_s" in cudnn else None)
    out.append(_target(f"pallas attention throughput / cuDNN at S={seq}", ">= 0.6", ratio,
                       None if ratio is None else ratio >= 0.6))
  steps = [c for c in _cases(parts, "sft_step") if c["remat"] == "full"]
  step = min(steps, key=lambda c: c["seq"]) if steps else None
  mfu = step.get("mfu") if step else None
  seq = step["seq"] if step else TARGET_LENGTH
  out.append(_target(f"SFT step MFU at S={seq} (remat full)", ">= 0.40", mfu,
                     None if mfu is None else mfu >= 0.40))
  for target in out:
    if dry_run:
      target["met"], target["note"] = None, "CPU dry run: not a GPU figure"
    elif target["value"] is None:
      target["note"] = "not measured (see the parts)"
  return out


# ---- Markdown ----------------------------------------------------------------------------------

def _num(x, fmt=".3g") -> str:
  return "-" if x is None else format(x, fmt)


def _bytes(n: int) -> str:
  for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
    if n >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n} B"


def case_figures(c: dict) -> str:
  """One cell summarizing a case's figures, whatever its kind."""
  if c["status"] in ("skipped", "error"):
    return c.get("reason") or c.get("traceback_tail", "").strip().splitlines()[-1][:160]
  if "errors" in c:
    worst = max(c["errors"], key=lambda k: float("inf") if c["errors"][k] != c["errors"][k]
                else c["errors"][k])
    return f"worst rel err {c['errors'][worst]:.2e} ({worst}), tol {c['tolerance']:.0e}"
  if "leak" in c:
    return f"leak {c['leak']:.2e} (max {c['max_leak']:.0e})"
  if "summary" in c:
    return c["summary"]
  parts = []
  if "median_s" in c:
    parts.append(f"{c['median_s'] * 1e3:.2f} ms ({c['min_s'] * 1e3:.2f}-{c['max_s'] * 1e3:.2f})")
  if "step_s" in c:
    parts.append(f"{c['step_s']:.3f} s/step, {c['tokens_per_s']:.0f} tok/s, "
                 f"MFU {_num(c['mfu'], '.1%') if c['mfu'] is not None else '-'}")
  if c.get("kind") == "sampler":
    parts.append(f"{c['tokens_per_s']:.0f} generated tok/s ({c['rows']} rows)")
  if "tflops" in c:
    share = f" ({c['peak_fraction']:.0%} of bf16 peak)" if "peak_fraction" in c else ""
    parts.append(f"{c['tflops']:.3g} TFLOP/s{share}")
  if "gb_per_s" in c:
    parts.append(f"{c['gb_per_s']:.0f} GB/s")
  if "not_run" in c:
    parts.append(f"not run: {c['not_run']}")
  if "temp_bytes" in c:
    parts.append(f"temp {_bytes(c['temp_bytes'])}")
  if c.get("host_temp_bytes"):
    parts.append(f"host temp {_bytes(c['host_temp_bytes'])}")
  if "peak_bytes_in_use" in c:
    parts.append(f"peak {_bytes(c['peak_bytes_in_use'])}")
  if "peak_at_most_bytes" in c:
    parts.append(f"peak <= {_bytes(c['peak_at_most_bytes'])}")
  return ", ".join(parts)


def markdown(result: dict) -> str:
  meta = result["meta"]
  title = ("CPU dry run (not GPU figures)" if meta["dry_run"] else meta.get("device_kind", "?"))
  lines = [f"## {meta['date']}: {title}", "",
           f"- command: `{meta['command']}`",
           f"- device: {meta.get('device_kind', '?')} x {meta.get('device_count', '?')} "
           f"({meta.get('backend', '?')}), driver {meta.get('driver') or 'n/a'}, "
           f"bf16 peak {_num(meta.get('peak_bf16_tflops'))} TFLOP/s",
           f"- jax {meta.get('jax', '?')}, jaxlib {meta.get('jaxlib', '?')}, python "
           f"{meta['python']}; budget {meta['budget_s']:.0f} s, took {meta['seconds']:.0f} s", "",
           "| part | status | seconds (limit) | cases | note |", "|---|---|---|---|---|"]
  for p in result["parts"]:
    counts = {}
    for c in p["cases"]:
      counts[c["status"]] = counts.get(c["status"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "-"
    lines.append(f"| {p['name']} | {p['status']} | {p['seconds']:.0f} ({p['limit_s']:.0f}) | "
                 f"{summary} | {p.get('reason', '')} |")
  for p in result["parts"]:
    if not p["cases"]:
      continue
    lines += ["", f"### {p['name']}", "", "| case | status | figures |", "|---|---|---|"]
    lines += [f"| {c['name']} | {c['status']} | {case_figures(c)} |" for c in p["cases"]]
  lines += ["", "### Targets (issue 15)", "", "| target | goal | value | met |",
            "|---|---|---|---|"]
  for t in result["targets"]:
    met = {True: "yes", False: "NO", None: "-"}[t["met"]]
    lines.append(f"| {t['name']} | {t['goal']} | {_num(t['value'])} | {met} {t['note']} |")
  return "\n".join(lines) + "\n"


def short_table(result: dict) -> str:
  """What the device tool's output tail should show: parts, failures, targets."""
  lines = ["", "GPU check summary" + (" (CPU dry run)" if result["meta"]["dry_run"] else "")]
  for p in result["parts"]:
    lines.append(f"  {p['name']:<8} {p['status']:<8} {p['seconds']:5.0f} s  {p.get('reason', '')}")
    for c in p["cases"]:
      if c["status"] in ("failed", "error"):
        lines.append(f"    {c['status'].upper()}: {c['name']}: {case_figures(c)[:150]}")
  for p in result["parts"]:
    for c in p["cases"]:
      if c.get("kind") and c["status"] == "ok":
        lines.append(f"  {c['name'][:44]:<44} {case_figures(c)[:110]}")
  for t in result["targets"]:
    met = {True: "met", False: "MISSED", None: "-"}[t["met"]]
    lines.append(f"  target {t['name'][:50]:<50} {_num(t['value']):>8} {t['goal']:<7} {met}")
  return "\n".join(lines)


def write(result: dict, out_dir: Path) -> tuple[Path, Path]:
  out_dir.mkdir(parents=True, exist_ok=True)
  json_path, md_path = out_dir / "gpu_results.json", out_dir / "gpu_results.md"
  json_path.write_text(json.dumps(result, indent=2, default=str))
  md_path.write_text(markdown(result))
  return json_path, md_path
