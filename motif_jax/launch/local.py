"""The local launcher: sweep points as subprocesses on this machine, at most `parallel` at once.

Each point runs `python -m motif_jax.launch.points POINT_DIR`, which takes the point's lock,
runs the experiment and writes its status; a failing point does not stop the others.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def point_command(point_dir: Path) -> list[str]:
  return [sys.executable, "-m", "motif_jax.launch.points", str(point_dir)]


def run(point_dirs: Sequence[Path], *, parallel: int, env: dict | None = None,
        on_exit: Callable[[Path, int], None] = lambda d, c: None, poll_s: float = 0.2) -> dict:
  """Run every point, `parallel` at a time; returns {point_dir: exit code}."""
  if parallel < 1:
    raise ValueError(f"--parallel={parallel} must be >= 1")
  queue, running, codes = list(point_dirs), {}, {}
  while queue or running:
    while queue and len(running) < parallel:
      point_dir = queue.pop(0)
      running[point_dir] = subprocess.Popen(point_command(point_dir), env=env,
                                            stdout=subprocess.DEVNULL)
    for point_dir, proc in list(running.items()):
      if proc.poll() is not None:
        codes[point_dir] = proc.returncode
        del running[point_dir]
        on_exit(point_dir, proc.returncode)
    time.sleep(poll_s)
  return codes
