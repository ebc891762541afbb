"""experiments.filter_data and experiments.bench_data end to end on the smoke config."""

import json
import subprocess
import sys

import grain
import numpy as np

from motif_jax.data import pipeline


def _run(*args):
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


def test_filter_data_smoke_writes_kept_records_report_and_histograms(tmp_path):
  run = _run("experiments.filter_data", "--config=configs/data.py:smoke", f"--workdir={tmp_path}")
  assert run.returncode == 0, run.stderr[-2000:]
  report = json.loads((tmp_path / "report.json").read_text())
  kept = (tmp_path / "kept.jsonl").read_text().splitlines()
  dropped = [json.loads(line) for line in (tmp_path / "dropped.jsonl").read_text().splitlines()]
  assert report["kept"] == len(kept) > 0 and report["dropped"] == len(dropped)
  assert report["records"] == report["kept"] + report["dropped"]
  dropped_by_filter = {f["name"]: f["seen"] - f["kept"] for f in report["filters"]}
  assert sum(dropped_by_filter.values()) == report["dropped"]
  for f in report["filters"]:
    assert f["seen"] - f["kept"] == sum(f["dropped"].values())
    assert sum(1 for d in dropped if d["dropped_by"] == f["name"]) == f["seen"] - f["kept"]
  misaligned = report["by_source"]["teacher_misaligned"]
  assert misaligned["kept"] == 0 and misaligned["dropped_by"]["style"] > 0
  aligned = report["by_source"]["teacher_aligned"]
  assert aligned["dropped_by"]["style"] == 0 and aligned["kept"] == report["kept"]
  assert sum(v["input"] for v in report["by_domain"].values()) == report["records"]
  for stat in ("response_tokens", "num_steps", "mean_step_tokens"):
    assert (tmp_path / f"hist_{stat}.png").read_bytes()[:4] == b"\x89PNG"
  assert "| style |" in (tmp_path / "report.md").read_text()
  assert (tmp_path / "toy_heldout.jsonl").exists() and (tmp_path / "style_profile.json").exists()


def test_filter_data_counts_malformed_input_and_names_an_unusable_file(tmp_path):
  good = json.dumps(dict(prompt="Start with 1. Add 2. What is the result?", domain="arith",
                         response="<think>\n1. 1 + 2 = 3\n</think>\n\\boxed{3}", answer="3",
                         source="mine"))
  (tmp_path / "in.jsonl").write_text(f"{good}\n{{broken\n{json.dumps({'prompt': 'x'})}\n")
  run = _run("experiments.filter_data", "--config=configs/data.py:smoke",
             f"--config.data.inputs={tmp_path / 'in.jsonl'}", f"--workdir={tmp_path / 'out'}")
  assert run.returncode == 0, run.stderr[-2000:]
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report["inputs"][str(tmp_path / "in.jsonl")] == dict(
      valid=1, invalid={"malformed_json": 1, "missing_response": 1})
  assert report["kept"] == 1
  (tmp_path / "bad.jsonl").write_text("{broken\n")
  run = _run("experiments.filter_data", "--config=configs/data.py:smoke",
             f"--config.data.inputs={tmp_path / 'bad.jsonl'}", f"--workdir={tmp_path / 'out2'}")
  assert run.returncode != 0 and "bad.jsonl: no valid record" in run.stderr


def test_bench_data_reports_tokens_per_second(tmp_path):
  out = tmp_path / "bench.json"
  run = _run("experiments.bench_data", "--config=configs/data.py:smoke", "--workers=0",
             "--batches=3", f"--out={out}")
  assert run.returncode == 0, run.stderr[-2000:]
  (result,) = json.loads(out.read_text())["results"]
  assert result["workers"] == 0 and result["tokens_per_s"] > 0 and 0 < result["fill"] <= 1


def test_throughput_fill_counts_real_tokens_not_padding():
  """Hand-built packed batches (segment id 0 = padding): 2 rows of 8 slots, the first batch
  (start-up, not timed) then two timed ones holding 5 + 8 and 3 + 0 real tokens."""
  def batch(*real):
    seg = np.zeros((2, 8), np.int32)
    for row, n in enumerate(real):
      seg[row, :n] = [1] * min(n, 4) + [2] * max(n - 4, 0)  # two packed segments
    return dict(tokens=np.where(seg > 0, 7, 0), segment_ids=seg)
  ds = grain.MapDataset.source([batch(8, 8), batch(5, 8), batch(3, 0)]).to_iter_dataset()
  result = pipeline.measure_throughput(ds, num_batches=2)
  assert result["packed_tokens"] == 16 and result["batches"] == 2
  assert result["fill"] == 16 / 32
  assert result["tokens_per_s"] == 16 / result["seconds"]
