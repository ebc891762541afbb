"""experiments.gpu_check: the CPU dry run end to end, failures reported as failures (planted wrong
kernels, NaN), the per-part budget (soft deadline and hard kill), errors, and --only."""

import importlib.util
import json
import os
import textwrap
from pathlib import Path

import jax.numpy as jnp
import pytest

from motif_jax.bench import gpu_check, gpu_harness, gpu_parity, gpu_report
from motif_jax.bench.gpu_harness import PartSpec
from pallas_kernels import flash_attention as fa
from pallas_kernels import fused_cross_entropy as fce

ROOT = Path(__file__).resolve().parents[1]


# ---- The dry run -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("gpu_check")
  result = gpu_check.run_check(out, budget_s=900, dry_run=True, command="dry run test",
                               log=lambda _: None)
  return out, result


def test_dry_run_writes_every_part_and_every_parity_check_passes(dry_run):
  out, result = dry_run
  saved = json.loads((out / "gpu_results.json").read_text())
  assert [p["name"] for p in saved["parts"]] == ["parity", "kernels", "step", "sampler"]
  # The sampler part needs motif_jax.sampling (issue 16); without it the part is skipped.
  sampler = "ok" if importlib.util.find_spec("motif_jax.sampling") else "skipped"
  assert {p["name"]: p["status"] for p in saved["parts"]} == {
      "parity": "ok", "kernels": "ok", "step": "ok", "sampler": sampler}, [
          p.get("reason") for p in saved["parts"]]
  parity = saved["parts"][0]["cases"]
  statuses = {c["name"]: c["status"] for c in parity}
  assert set(statuses.values()) == {"passed", "skipped"}
  # Off a GPU only cuDNN and the gpu-marked pytest run are skipped, each with its reason.
  skipped = [c for c in parity if c["status"] == "skipped"]
  assert {c["name"] for c in skipped} == {
      "attend_dot_product cudnn bfloat16 packed segments vs attend",
      "segment isolation attend_dot_product cudnn bfloat16", "pytest -m gpu"}
  assert all("CUDA" in c["reason"] for c in skipped)
  kinds = " ".join(statuses)
  for feature in ("cross_entropy pallas", "cross_entropy xla", "flash_attention pallas",
                  "flash_attention xla", "causal offset", "segment isolation flash",
                  "attend_dot_product xla", "float32", "bfloat16"):
    assert feature in kinds
  outputs = {"cross_entropy": {"loss", "entropy", "logprob", "dh", "dw"},
             "flash_attention": {"o", "lse", "dq", "dk", "dv"},
             "attend_dot_product": {"o", "dq", "dk", "dv"}}
  for c in parity:
    if c["status"] == "passed" and "errors" in c:
      assert set(c["errors"]) == outputs[c["name"].split()[0]]
      assert all(e <= c["tolerance"] for e in c["errors"].values())


def test_dry_run_measures_kernels_step_and_sampler(dry_run):
  out, result = dry_run
  by_name = {c["name"]: c for p in result["parts"] for c in p["cases"]}
  assert by_name["ceiling bf16 matmul 256^3"]["tflops"] > 0
  assert by_name["ceiling copy 0.00391 GiB"]["gb_per_s"] > 0
  for impl in ("pallas", "xla", "naive"):
    case = by_name[f"cross_entropy {impl} T=64"]
    assert case["median_s"] > 0 and case["temp_bytes"] >= 0
  assert by_name["attention cudnn S=64"]["status"] == "skipped"
  steps = [c for c in by_name.values() if c.get("kind") == "sft_step"]
  assert {c["remat"] for c in steps} == {"full", "offload"}
  assert all(c["loss_finite"] and c["tokens_per_s"] > 0 for c in steps)
  samples = [c for c in by_name.values() if c.get("kind") == "sampler"]
  if importlib.util.find_spec("motif_jax.sampling") is None:
    assert result["parts"][3]["reason"] == "sampling module missing"
    samples = [{"generated_tokens": 1, "rows": 1, "max_new_tokens": 1, "logprobs_finite": True}]
  assert len(samples) == 1 and all(c["generated_tokens"] == c["rows"] * c["max_new_tokens"]
                                   and c["logprobs_finite"] for c in samples)
  # Every target is recorded, none judged on CPU figures; the Markdown says it is a dry run.
  assert len(result["targets"]) == 4 and all(t["met"] is None for t in result["targets"])
  md = (out / "gpu_results.md").read_text()
  assert "CPU dry run (not GPU figures)" in md and "`dry run test`" in md
  assert "GPU check summary (CPU dry run)" in gpu_report.short_table(result)


# ---- Failures are reported as failures ---------------------------------------------------------

# Wrong kernels built from the (cheap to compile) references, each missing one feature.
def _ce_ignoring_temperature(h, w, labels, mask, *, temperature, z_loss):
  return fce.fused_cross_entropy_reference(h, w, labels, mask, temperature=1.0, z_loss=z_loss)


def _flash_ignoring_segments(q, k, v, seg_q, seg_k, q_offset):
  return fa.flash_attention_reference(q, k, v, None, q_offset=q_offset)


def test_planted_wrong_kernels_fail_their_checks():
  ce = gpu_parity.check_cross_entropy(_ce_ignoring_temperature, tokens=24, d_model=16,
                                      vocab=100, dtype=jnp.float32)
  assert not ce["passed"] and ce["errors"]["loss"] > 1e-2
  attn = gpu_parity.check_flash_attention(_flash_ignoring_segments, b=1, t=32, k=1, g=2,
                                          h=16, v=32, dtype=jnp.float32)
  assert not attn["passed"] and attn["errors"]["o"] > 1e-2


def test_segment_leak_is_caught():
  """An attention that ignores packed segment ids (the MaxText cudnn_flash_jax bug) fails."""
  leaky = lambda q, k, v, seg: fa.flash_attention_reference(q, k, v, None)[0]  # noqa: E731
  sealed = lambda q, k, v, seg: fa.flash_attention_reference(q, k, v, seg)[0]  # noqa: E731
  shape = dict(b=1, t=48, k=1, g=2, h=16, v=16, dtype=jnp.float32)
  bad, good = (gpu_parity.check_segment_isolation(f, **shape) for f in (leaky, sealed))
  assert not bad["passed"] and bad["leak"] > 0.01
  assert good["passed"] and good["leak"] == 0.0


def test_nan_never_passes():
  ref = jnp.ones((4, 3))
  assert not gpu_parity.gm.compare({"x": ref.at[1, 1].set(jnp.nan)}, {"x": ref},
                                   jnp.float32)["passed"]
  assert gpu_parity.gm.compare({"x": ref * (1 + 1e-4)}, {"x": ref}, jnp.float32)["passed"]
  assert not gpu_parity.gm.compare({"x": ref * 1.01}, {"x": ref}, jnp.float32)["passed"]


# ---- The harness: budgets, errors, --only ------------------------------------------------------

PARTS_SOURCE = textwrap.dedent('''
    import time
    from motif_jax.bench.gpu_harness import Skipped

    def fine(ctx):
      yield "check", lambda: {"passed": True}
      yield "measure", lambda: {"median_s": 0.5}

    def planted_failure(ctx):
      yield "wrong kernel", lambda: {"passed": False, "errors": {"o": 0.5}, "tolerance": 0.01}
      yield "next", lambda: {"passed": True}

    def hangs(ctx):
      yield "quick", lambda: {"x": 1}
      yield "hang", lambda: time.sleep(120)
      yield "never", lambda: {"x": 2}

    def slow_cases(ctx):
      for i in range(50):
        yield f"case {i}", lambda: time.sleep(0.2) or {"i": 1}

    def raises(ctx):
      yield "boom", lambda: 1 / 0
      yield "after", lambda: {"passed": True}

    def crashes(ctx):
      yield "first", lambda: {"x": 1}
      yield "exit", lambda: __import__("os")._exit(3)

    def missing(ctx):
      raise Skipped("sampling module missing")
      yield
''')


@pytest.fixture(scope="module")
def fake_parts(tmp_path_factory):
  """Modules `fake_<name>` exposing cases(), importable by the part processes."""
  root = tmp_path_factory.mktemp("fake_parts")
  names = ("fine", "planted_failure", "hangs", "slow_cases", "raises", "crashes", "missing")
  for name in names:
    (root / f"fake_{name}.py").write_text(PARTS_SOURCE + f"\ncases = {name}\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(ROOT)]))
  return env, {n: PartSpec(n, f"fake_{n}", 1.0) for n in names}


def test_part_over_budget_is_timeout_and_next_part_runs(fake_parts, tmp_path):
  env, parts = fake_parts
  hung, after = gpu_harness.run_parts([parts["hangs"], parts["fine"]], budget_s=8,
                                      out_dir=tmp_path, dry_run=True, env=env, grace_s=1.0,
                                      log=lambda _: None)
  assert hung["status"] == "timeout" and "hard watchdog" in hung["reason"]
  assert [c["name"] for c in hung["cases"]] == ["quick"]  # what it finished is kept
  assert hung["seconds"] < 6  # killed at its half of the budget, not after the 120 s sleep
  assert after["status"] == "ok" and len(after["cases"]) == 2


def test_soft_deadline_stops_between_cases(fake_parts, tmp_path):
  env, parts = fake_parts
  result = gpu_harness.run_part(parts["slow_cases"], limit_s=30, grace_s=28, out_dir=tmp_path,
                                dry_run=True, env=env)
  assert result["status"] == "timeout" and "deadline reached before case" in result["reason"]
  assert 1 <= len(result["cases"]) < 50 and result["seconds"] < 10


def test_errors_are_recorded_and_the_part_goes_on(fake_parts, tmp_path):
  env, parts = fake_parts
  raised, crashed, failed, missing = gpu_harness.run_parts(
      [parts["raises"], parts["crashes"], parts["planted_failure"], parts["missing"]],
      budget_s=120, out_dir=tmp_path, dry_run=True, env=env, log=lambda _: None)
  assert raised["status"] == "error"
  assert raised["cases"][0]["status"] == "error"
  assert "ZeroDivisionError" in raised["cases"][0]["traceback_tail"]
  assert raised["cases"][1]["status"] == "passed"
  assert crashed["status"] == "error" and "code 3" in crashed["reason"]
  assert [c["name"] for c in crashed["cases"]] == ["first"]
  assert failed["status"] == "failed" and [c["status"] for c in failed["cases"]] == [
      "failed", "passed"]
  assert missing["status"] == "skipped" and missing["reason"] == "sampling module missing"


def test_only_selects_parts_and_a_failure_shows_in_the_outputs(fake_parts, tmp_path, monkeypatch):
  env, parts = fake_parts
  monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
  table = (parts["fine"], parts["planted_failure"], parts["missing"])
  result = gpu_check.run_check(tmp_path, budget_s=60, only=["planted_failure", "missing"],
                               parts=table, command="cmd", log=lambda _: None)
  assert [p["name"] for p in result["parts"]] == ["planted_failure", "missing"]
  saved = json.loads((tmp_path / "gpu_results.json").read_text())
  assert [p["status"] for p in saved["parts"]] == ["failed", "skipped"]
  md = (tmp_path / "gpu_results.md").read_text()
  assert "| wrong kernel | failed | worst rel err 5.00e-01 (o), tol 1e-02 |" in md
  assert "FAILED: wrong kernel" in gpu_report.short_table(result)
  with pytest.raises(ValueError, match="unknown parts"):
    gpu_check.select(["nope"])
  assert [p.name for p in gpu_check.select(["step", "parity"])] == ["parity", "step"]


def test_targets_are_judged_from_the_cases():
  parts = [{"cases": [
      {"kind": "cross_entropy", "impl": "pallas", "tokens": 8192, "median_s": 1.1,
       "temp_bytes": 10},
      {"kind": "cross_entropy", "impl": "reference", "tokens": 8192, "median_s": 1.0,
       "temp_bytes": 150},
      {"kind": "attention", "impl": "pallas", "seq": 8192, "segments": 1, "median_s": 2.0},
      {"kind": "attention", "impl": "cudnn", "seq": 8192, "segments": 1, "median_s": 1.0},
      {"kind": "sft_step", "seq": 8192, "remat": "full", "mfu": 0.45},
      {"kind": "sft_step", "seq": 32768, "remat": "full", "mfu": 0.2}]}]
  got = {t["name"]: (round(t["value"], 6), t["met"])
         for t in gpu_report.targets(parts, dry_run=False)}
  assert got == {"fused CE (pallas) time / naive at T=8192": (1.1, True),
                 "naive / fused CE (pallas) temp memory at T=8192": (15.0, False),
                 "pallas attention throughput / cuDNN at S=8192": (0.5, False),
                 "SFT step MFU at S=8192 (remat full)": (0.45, True)}
  missing = gpu_report.targets([{"cases": []}], dry_run=False)
  assert all(t["met"] is None and t["note"] for t in missing) and len(missing) == 4
  assert all("=8192" in t["name"] for t in missing)
