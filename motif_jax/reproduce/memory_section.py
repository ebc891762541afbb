"""Section 6: memory of the fused loss and flash attention against the naive paths."""

from __future__ import annotations

from motif_jax.reproduce import plots, stats
from motif_jax.reproduce.sections import Section, Table, fmt

GIB = 2**30
TITLE = "Memory: fused loss and flash attention vs the naive paths"
CLAIM = ("Memory is the wall: the fused chunked loss never builds the [tokens, vocab] logits "
         "(O(chunk x V) memory, recipe §7.7e) and flash attention never builds the [seq, seq] "
         "scores, so both need far less memory than the naive paths at the Motif shapes.")
NAIVE, FUSED = "reference", "xla"


def _kernel_rows(kernels: dict, kind: str, prefix: str) -> tuple[list[list[str]], list[bool],
                                                                  dict]:
  """Rows (shape, naive GiB, fused GiB, naive / fused) and whether fused < naive per shape."""
  naive, fused = kernels[kind].get(NAIVE, {}), kernels[kind].get(FUSED, {})
  rows, wins, bars = [], [], {}
  for key in sorted(set(naive) & set(fused), key=lambda k: (len(k), k)):  # T8192 before T65536
    if not key.startswith(prefix) or naive[key] is None or fused[key] is None:
      continue
    n, f = naive[key] / GIB, fused[key] / GIB
    label = f"{kind.replace('_', '-')} {key.removeprefix('temp_bytes_')}"
    rows.append([label, fmt(n, ".2f"), fmt(f, ".2f"), fmt(n / f, ".1f") + "x"])
    wins.append(f < n)
    bars[label] = {"naive": n, "fused": f}
  return rows, wins, bars


def growth(kernels: dict, kind: str, prefix: str) -> float | None:
  """Fused temp at the largest shape over the smallest: ~1 when memory does not grow with it."""
  fused = {k: v for k, v in kernels[kind].get(FUSED, {}).items() if k.startswith(prefix) and v}
  if len(fused) < 2:
    return None
  ordered = sorted(fused, key=lambda k: int(k.removeprefix(prefix)))
  return fused[ordered[-1]] / fused[ordered[0]]


def memory(results: dict, commands: list[str]) -> Section:
  section = Section(6, TITLE, CLAIM,
                    commands=commands)
  data = results.get("memory")
  if not data:
    section.status, section.reason = "incomplete", "the memory run has not finished"
    return section
  kernels = data["kernels"]
  ce_rows, ce_wins, ce_bars = _kernel_rows(kernels, "cross_entropy", "temp_bytes_T")
  at_rows, at_wins, at_bars = _kernel_rows(kernels, "attention", "temp_bytes_S")
  section.tables.append(Table(
      "Temp memory of loss + gradients, GiB (AOT compile, nothing allocated; "
      f"{data['kernel_source']}"
      "). Cross-entropy at D=4,096, V=219,520, bf16; GDA attention with 40 query / 16 KV heads, "
      "head dim 128, bf16.", ["shape", "naive GiB", "fused GiB", "naive / fused"],
      ce_rows + at_rows))
  ce_growth = growth(kernels, "cross_entropy", "temp_bytes_T")
  if ce_growth is not None:
    section.notes.append(f"The fused loss's temp memory grows {ce_growth:.3f}x from the "
                         "smallest to the largest token count measured (x8 tokens): O(chunk x V), "
                         "independent of the number of tokens.")
  plan_rows = [[r["loss_impl"], r["config"], ",".join(f"{k}={v}" for k, v in r["mesh"].items()
                                                       if v > 1) or "1 device",
                f"{r['seq_len']:,}", r["remat"], fmt(r["per_device_bytes"] / GIB, ".2f"),
                fmt(r["temp_bytes"] / GIB, ".2f")] for r in data.get("plan", [])]
  if plan_rows:
    section.tables.append(Table(
        "Whole SFT step per device (motif_jax.memory_plan, AOT on fake CPU devices; the CPU "
        "compiler's buffers stand in for the GPU's, read as ±20%)",
        ["loss", "model", "mesh", "tokens/row", "remat", "total GiB", "temp GiB"], plan_rows))
  wins = ce_wins + at_wins
  if not wins:
    label, reason = stats.INCONCLUSIVE, "no shape has both a naive and a fused figure"
  elif all(wins):
    ratios = [r[3] for r in ce_rows + at_rows]
    label, reason = stats.SUPPORTED, (f"the fused path needs less temp memory at all {len(wins)} "
                                      f"shapes (naive / fused: {', '.join(ratios)})")
  else:
    label, reason = stats.NOT_SUPPORTED, (f"the fused path needs as much or more memory at "
                                          f"{wins.count(False)} of {len(wins)} shapes")
  section.notes.insert(0, f"Verdict rule: supported when the fused path's temp memory is below "
                          "the naive path's at every measured shape (deterministic compiler "
                          "figures: no seeds).")
  section.checks.append(("the fused loss and flash attention need less memory than the naive "
                         "paths", "AOT temp bytes, naive vs fused", stats.Verdict(label, reason)))
  if ce_bars or at_bars:
    section.figures.append(plots.bars("memory", "Temp memory, naive vs fused (GiB, log scale)",
                                      {**ce_bars, **at_bars}, "GiB", log=True))
  return section
