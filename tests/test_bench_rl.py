"""bench_rl runs on the smoke preset and writes its JSON: both steps timed on the same tokens."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_bench_rl_smoke_writes_alternating_rounds(tmp_path):
  out = tmp_path / "rl.json"
  run = subprocess.run([sys.executable, "-m", "experiments.bench_rl",
                        "--config=configs/bench_step.py:smoke", "--rounds=2", "--prompt_len=4",
                        f"--out={out}"], cwd=ROOT, check=True, capture_output=True, text=True,
                       timeout=300)
  result = json.loads(out.read_text())
  assert result["rounds"] == 2 and result["tokens"] == 2 * 32
  for side in ("sft", "rl", "old_logprobs"):
    s = result["step_s"][side]
    assert len(s["all"]) == 2 and 0 < s["min"] <= s["median"] <= s["max"]
  ratios = [r / s for r, s in zip(result["step_s"]["rl"]["all"], result["step_s"]["sft"]["all"])]
  np.testing.assert_allclose(result["rl_over_sft"]["all"], ratios)
  # The packed rows are full and the RL step counts exactly their completion tokens.
  assert result["rl_metrics"]["train/tokens"] == result["loss_tokens"] > 0
  assert result["rl_metrics"]["train/sequences"] == result["trajectories"] > 2
  assert "rl / sft" in run.stdout
