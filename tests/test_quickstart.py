"""`make quickstart`'s entry point runs end to end (smoke size)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_smoke(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-m", "experiments.quickstart", "--smoke",
                        f"--workdir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = run.stdout
  assert "teacher_misaligned" in out and "eval/accuracy" in out and "eval/loss" in out
  assert (tmp_path / "data" / "report.md").exists() and (tmp_path / "data" / "kept.jsonl").exists()
  assert (tmp_path / "sft" / "final" / "model_config.json").exists()
  assert (tmp_path / "sft" / "metrics.jsonl").read_text().count("loss/ce") == 4
