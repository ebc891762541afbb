"""Metrics sinks: one JSON line per logged step in `metrics.jsonl`, and TensorBoard events."""

from __future__ import annotations

import json
from pathlib import Path

from tensorboardX import SummaryWriter


class MetricsWriter:
  """Appends `{"step": n, name: value, ...}` lines and scalar summaries under the workdir."""

  def __init__(self, workdir: str | Path, *, enabled: bool = True):
    self.enabled = enabled
    if enabled:
      self._jsonl = open(Path(workdir) / "metrics.jsonl", "a", buffering=1)
      self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled or not scalars:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    for name, value in scalars.items():
      self._tb.add_scalar(name, value, step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
