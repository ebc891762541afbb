"""The GPU check (issue 15): parity, kernel speed and memory, an SFT step, the sampler.

    python -m experiments.gpu_check --out=DIR [--budget_s=420] [--only=parity,kernels]
    python -m experiments.gpu_check --out=DIR --dry_run     # CPU: tiny shapes, interpret mode

Parts run in order of value, each in its own process with its share of the budget
(gpu_harness); the results go to DIR/gpu_results.json and DIR/gpu_results.md (a section for
docs/gpu_results.md), and a short table is printed last.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from motif_jax.bench import gpu_report
from motif_jax.bench.gpu_harness import PartSpec, run_parts

# Weights: shares of the budget left when a part starts (time a part leaves over flows on).
PARTS = (PartSpec("parity", "motif_jax.bench.gpu_parity", 0.35),
         PartSpec("kernels", "motif_jax.bench.gpu_kernels", 0.27),
         PartSpec("step", "motif_jax.bench.gpu_step", 0.26),
         PartSpec("sampler", "motif_jax.bench.gpu_sampler", 0.12))
ROOT = Path(__file__).resolve().parents[2]


def select(only: list[str] | None, parts: tuple[PartSpec, ...] = PARTS) -> list[PartSpec]:
  if not only:
    return list(parts)
  names = [p.name for p in parts]
  unknown = sorted(set(only) - set(names))
  if unknown:
    raise ValueError(f"--only: unknown parts {unknown}; parts are {names}")
  return [p for p in parts if p.name in only]


def driver_version() -> str | None:
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def child_env() -> dict:
  """The parts' environment: the project importable; GPU memory taken as needed (the parity
  part starts pytest beside itself) up to 90% of the device (the naive loss at 32K is large)."""
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  return env


def run_check(out_dir: Path, *, budget_s: float = 420.0, only: list[str] | None = None,
              dry_run: bool = False, parts: tuple[PartSpec, ...] = PARTS,
              command: str | None = None, log=print) -> dict:
  """Runs the selected parts and writes the JSON and Markdown after each one."""
  start = time.time()
  meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "command": command or shlex.join([Path(sys.executable).name, "-m",
                                            "experiments.gpu_check", *sys.argv[1:]]),
          "dry_run": dry_run, "budget_s": budget_s, "python": platform.python_version(),
          "driver": driver_version()}

  def report(results: list[dict]) -> dict:
    environment = next((p["environment"] for p in results if p.get("environment")), {})
    result = {"meta": {**meta, "seconds": time.time() - start, **environment}, "parts": results,
              "targets": gpu_report.targets(results, dry_run=dry_run)}
    gpu_report.write(result, out_dir)
    return result

  results = run_parts(select(only, parts), budget_s=budget_s, out_dir=out_dir, dry_run=dry_run,
                      env=child_env(), log=log, on_part=report)
  return report(results)
