"""The reproduce study: statistics against hand-computed values, verdict rules, the report from
hand-built results, resume of a finished part, and (slow) the smoke study end to end."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from configs import reproduce as reproduce_config
from motif_jax.reproduce import report, run, stats
from motif_jax.reproduce.study import DATA_CONDITIONS, RL_CONDITIONS

ROOT = Path(__file__).resolve().parents[1]


# --- statistics against hand-computed values ------------------------------------------------

def test_summary_mean_sd_and_t_interval_by_hand():
  # [1, 2, 3, 4]: mean 2.5, s = sqrt(5/3) = 1.290994; t_{0.975, 3} = 3.182446 (table value);
  # half width 3.182446 * 1.290994 / 2 = 2.054260. (A z interval would give 1.265 instead.)
  s = stats.summarize([1, 2, 3, 4])
  assert (s.n, s.mean) == (4, 2.5)
  assert s.std == pytest.approx(1.290994, abs=1e-6)
  assert (s.lo, s.hi) == pytest.approx((2.5 - 2.054260, 2.5 + 2.054260), abs=2e-6)
  one = stats.summarize([0.3])
  assert one.mean == 0.3 and math.isnan(one.std) and math.isnan(one.lo)


def test_paired_t_test_by_hand_with_two_degrees_of_freedom():
  # d = [3-1, 5-2, 7-4] = [2, 3, 3]: mean 8/3, s = sqrt(1/3), se = s / sqrt(3) = 1/3, t = 8.
  # With df = 2 the t CDF is closed-form, F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided
  # p = 1 - t / sqrt(2 + t^2) = 1 - 8 / sqrt(66) = 0.015268, and the quantile t_{0.975,2} =
  # 0.95 sqrt(2 / (1 - 0.95^2)) = 4.302653: interval 8/3 -+ 4.302653 / 3.
  r = stats.paired([3, 5, 7], [1, 2, 4])
  assert r.n == 3 and r.mean_diff == pytest.approx(8 / 3)
  assert r.std_diff == pytest.approx(math.sqrt(1 / 3))
  assert r.t == pytest.approx(8.0)
  assert r.p == pytest.approx(1 - 8 / math.sqrt(66), abs=1e-9)
  half = 0.95 * math.sqrt(2 / (1 - 0.95**2)) / 3
  assert (r.lo, r.hi) == pytest.approx((8 / 3 - half, 8 / 3 + half), abs=1e-9)
  # Pairing matters: the unpaired spread of [3, 5, 7] vs [1, 2, 4] is much wider than this.
  assert r.hi - r.lo < 2.9


def test_paired_degenerate_cases():
  same_shift = stats.paired([1.5, 2.5], [1.0, 2.0])  # every seed moves by exactly +0.5
  assert (same_shift.lo, same_shift.hi, same_shift.p) == (0.5, 0.5, 0.0)
  assert same_shift.t == math.inf
  assert stats.paired([0.0, 0.0], [0.0, 0.0]).p == 1.0
  with pytest.raises(ValueError, match="equal lengths"):
    stats.paired([1, 2], [1])


def test_bootstrap_interval_by_enumeration():
  # Two values: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 2.5% and
  # 97.5% quantiles are 0 and 1; a constant sample has a zero-width interval.
  assert stats.bootstrap_interval([0.0, 1.0], num_resamples=20_000) == (0.0, 1.0)
  assert stats.bootstrap_interval([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4), abs=1e-15)
  lo, hi = stats.bootstrap_interval([0.1, 0.2, 0.3, 0.4], seed=3)
  assert 0.1 <= lo < 0.25 < hi <= 0.4
  assert stats.bootstrap_interval([0.1, 0.2, 0.3, 0.4], seed=3) == (lo, hi)  # seeded


@pytest.mark.parametrize("a, b, higher, label", [
    ([0.50, 0.60, 0.55], [0.30, 0.35, 0.32], True, stats.SUPPORTED),
    ([0.30, 0.35, 0.32], [0.50, 0.60, 0.55], True, stats.NOT_SUPPORTED),  # opposite effect
    ([1.0, 1.2, 1.1], [1.5, 1.6, 1.4], False, stats.SUPPORTED),  # lower is better
    ([0.501, 0.499, 0.5005], [0.5, 0.5, 0.5], True, stats.NOT_SUPPORTED),  # inside the margin
    ([0.5, 0.2, 0.6], [0.4, 0.5, 0.3], True, stats.INCONCLUSIVE),  # straddles 0 and the margin
    ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], True, stats.INCONCLUSIVE),  # floor: nothing solved
    ([0.9], [0.1], True, stats.INCONCLUSIVE),  # one seed
])
def test_verdict_rules(a, b, higher, label):
  v = stats.verdict(a, b, higher_is_better=higher, margin=0.02)
  assert v.label == label, v.reason
  if len(a) > 1 and len(set(a + b)) > 1:
    assert re.search(r"CI [-+]\d", v.reason) and "p=" in v.reason


# --- the report from hand-built results -----------------------------------------------------

def _sft_point(condition, seed, acc, tokens=4000.0, phase_ok=True):
  final = {"eval/accuracy": acc, "eval/format_ok": 1.0, "eval/loss": 0.5 - acc / 10}
  for d in (1, 2):
    final[f"eval/accuracy/arith/d{d}"] = min(1.0, acc * (3 - d))
    final[f"eval/accuracy/lists/d{d}"] = acc / d
  return {"condition": condition, "seed": seed, "status": "done" if phase_ok else "failed",
          "dir": f"/x/{condition}/{seed}", "final": final if phase_ok else {}, "tokens": tokens,
          "budget": 4000, "steps": 10, "curves": {}, "wall_s": 1.0}


def _rl_point(condition, seed, entropy_end):
  curves = {"rollout/reward": [[1, 0.1], [2, 0.3], [3, 0.2], [4, 0.5]],
            "eval/accuracy": [[2, 0.1], [4, 0.2]], "entropy": [[1, 1.0], [4, entropy_end]],
            "clip/high": [[1, 0.01], [4, 0.02]], "clip/low": [[1, 0.0], [4, 0.01]],
            "rollout/response_length": [[1, 30.0], [4, 28.0]], "filter/keep_rate": [[1, 0.5]]}
  return {"condition": condition, "seed": seed, "status": "done", "dir": "/x",
          "final": {"eval/accuracy": 0.2 + 0.01 * seed}, "tokens": 900.0 + seed, "budget": 0,
          "steps": None, "curves": curves, "wall_s": 1.0}


def _probe_json(style_rho):
  """probe.json as motif_jax.probe writes it: three teachers, the aligned one best by (d)."""
  names = ("teacher_aligned", "teacher_verbose", "teacher_misaligned")
  candidates = [{"name": n, "nll": 0.5 + i, "style_distance": 1.0 + 2 * i, "verify_rate": 1.0,
                 "probe_pass@1": 0.3 - 0.1 * i, "probe_pass@2": 0.4 - 0.1 * i,
                 "probe_mean_reward": 0.3} for i, n in enumerate(names)]
  return {"candidates": candidates, "ranking": list(names), "token_budget": 1000,
          "correlations": {"nll": {"spearman": 1.0}, "style_distance": {"spearman": style_rho},
                           "verify_rate": {"spearman": None}},
          "recommendation": "Scale `teacher_aligned`."}


def _study(parts="data,curriculum,probe,rl,memory"):
  study = reproduce_config.get_config("smoke").study
  study.parts = parts
  return study


@pytest.fixture(scope="module")
def hand_built_report(tmp_path_factory):
  acc = {"aligned": 0.6, "misaligned": 0.3, "mix_unfiltered": 0.35, "mix_filtered": 0.58,
         "unverified": 0.3}
  data = [_sft_point(c.name, s, acc[c.name] + 0.01 * s * (1 + i % 2))
          for i, c in enumerate(DATA_CONDITIONS) for s in range(3)]
  data[-1] = _sft_point("unverified", 2, 0.0, phase_ok=False)  # a failed run is reported
  stage1 = [_sft_point("stage1", s, 0.2, tokens=2000.0) for s in range(3)]
  stage2 = [_sft_point("stage2", s, 0.6 + 0.01 * s, tokens=2000.0) for s in range(3)]
  rl_points = [_rl_point(c.name, s, 0.5 if c.name == "symmetric" else 0.9 - 0.01 * s)
               for c in RL_CONDITIONS for s in range(3)]
  kernels = json.loads((ROOT / "docs/bench_kernels_cpu.json").read_text())
  results = {"phases": {"data": data, "curriculum_stage1": stage1, "curriculum_stage2": stage2,
                        "rl": rl_points},
             "memory": {"kernels": kernels, "kernel_source": "docs/bench_kernels_cpu.json",
                        "plan": [], "plan_cell": {}},
             "probe": [_probe_json(1.0), _probe_json(0.5)]}
  commands = {p: [f"python -m experiments.reproduce --config.study.parts={p}"]
              for p in ("data", "curriculum", "probe", "rl", "memory")}
  sections = run.sections_for(results, _study(), commands)
  out = tmp_path_factory.mktemp("report")
  paths = report.write(out, sections, {"title": "t", "intro": ["hand-built"]})
  return sections, paths


def test_report_sections_and_verdicts_from_hand_built_results(hand_built_report):
  sections, paths = hand_built_report
  assert [s.number for s in sections] == [1, 2, 3, 4, 5, 6]
  verdicts = {(s.number, lesson): label for s in sections
              for lesson, _, label, _ in report.verdict_lines(s)}
  by_section = {}
  for (number, lesson), label in verdicts.items():
    by_section.setdefault(number, []).append((lesson, label))
  # Section 1: aligned (0.60-0.62) vs misaligned (0.30-0.32) by +0.3 on every seed: supported.
  assert by_section[1][0][1] == stats.SUPPORTED
  # Section 2: the failed unverified seed is left out: 2 pairs remain, and the note says so.
  two = sections[1]
  assert two.comparisons[0].seeds == [0, 1]
  assert any("not finished" in n and "unverified/seed 2" in n for n in two.notes)
  # Section 4: two stages (0.60-0.62) vs the mixed stage = data/aligned (0.60-0.62): equal up to
  # 0.01 per seed, inside the 0.02 margin.
  assert sections[3].comparisons[0].verdict.label == stats.NOT_SUPPORTED
  assert "4,000 vs 4,0" in sections[3].comparisons[0].budget  # both stages' tokens summed
  # Section 5: clip-higher ends with entropy 0.88-0.9 against symmetric 0.5.
  clip = [c for c in sections[4].comparisons if c.worse == "symmetric"][0]
  assert clip.verdict.label == stats.SUPPORTED
  # Section 3: NLL agrees with the probe's SFT on both seeds (rho +1, +1): supported; style
  # +1 then +0.5: partial; verify rate constant: undefined; the probe ranks the aligned teacher
  # first as the study's SFT runs do (0.6 vs 0.3).
  checks = {lesson.split(" orders")[0]: v.label for lesson, _, v in sections[2].checks}
  assert checks["(a) student NLL"] == stats.SUPPORTED
  assert checks["(b) style distance"] == stats.INCONCLUSIVE
  assert checks["(c) verify rate"] == stats.INCONCLUSIVE
  assert sections[2].checks[-1][2].label == stats.SUPPORTED
  # Section 6 from the committed kernel benchmark: fused below naive everywhere.
  assert sections[5].checks[0][2].label == stats.SUPPORTED
  # Every judgement states its numbers.
  for s in sections:
    for _, _, label, reason in report.verdict_lines(s):
      assert label in (stats.SUPPORTED, stats.NOT_SUPPORTED, stats.INCONCLUSIVE)
      assert re.search(r"\d", reason), reason


def test_report_files_have_every_section_tables_and_inline_figures(hand_built_report):
  sections, paths = hand_built_report
  md, page = paths["md"].read_text(), paths["html"].read_text()
  for s in sections:
    assert f"## {s.number}. " in md and f"<h2>{s.number}. " in page
  assert md.count("report_figures/") >= 4 and page.count("data:image/png;base64,") >= 4
  for link in re.findall(r"\]\((report_figures/[^)]+)\)", md):
    assert (paths["md"].parent / link).stat().st_size > 1000
  assert "python -m experiments.reproduce --config.study.parts=rl" in md
  assert "| aligned teacher, verified | 3 | 0.610 ± 0.010" in md  # mean ± sd over 3 seeds


# --- resume: a finished part is reused -------------------------------------------------------

_TINY_STUDY = '''
import ml_collections
from configs import reproduce

def get_config(arg=None):
  args = dict(a.split("=") for a in (arg or "").split(",") if "=" in a)
  if args.get("run") == "memory":
    config = reproduce.memory_run(True)
    config.memory.plan_loss_impls = ""  # kernels from the committed JSON only: seconds
    config.memory.kernel_json = "{kernels}"
    return config
  config = reproduce.get_config("smoke")
  config.study.parts = "memory"
  config.study.parallel = 2  # single-run phases then go beside the others
  return config
'''


def test_resume_reuses_a_finished_part(tmp_path):
  config = tmp_path / "tiny_study.py"
  config.write_text(_TINY_STUDY.format(kernels=ROOT / "docs/bench_kernels_cpu.json"))
  workdir = tmp_path / "study"
  cmd = [sys.executable, "-m", "experiments.reproduce", f"--workdir={workdir}",
         f"--config={config}"]
  first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-3000:]
  memory_json = next(workdir.glob("memory/*/memory.json"))
  stamp = memory_json.stat().st_mtime_ns
  second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert second.returncode == 0, second.stderr[-3000:]
  # With parallel > 1 the single memory run goes beside the other phases, as its own sweep
  # process.
  sweep_log = (workdir / "memory" / "sweep_log.txt").read_text()
  assert sweep_log.count("launching 1 of 1") == 1 and "skip" in sweep_log
  assert memory_json.stat().st_mtime_ns == stamp  # not run again
  md = (workdir / "report.md").read_text()
  assert "**supported**" in md and "## 6. Memory" in md
  assert "Status: not run.** not in study.parts" in md  # the other sections say why


# --- the smoke study end to end ---------------------------------------------------------------

@pytest.mark.slow
def test_smoke_study_end_to_end_and_resume(tmp_path):
  workdir = tmp_path / "smoke"
  cmd = [sys.executable, "-m", "experiments.reproduce", f"--workdir={workdir}",
         "--config=configs/reproduce.py:smoke"]
  first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
  assert first.returncode == 0, first.stderr[-3000:]
  md = (workdir / "report.md").read_text()
  for number in range(1, 7):
    assert f"## {number}. " in md
  saved = json.loads((workdir / "results.json").read_text())
  for section in saved["verdicts"]:
    if section["status"] == "not run":
      assert section["reason"]
    for v in section["verdicts"]:
      assert v["verdict"] in (stats.SUPPORTED, stats.NOT_SUPPORTED, stats.INCONCLUSIVE)
      assert re.search(r"\d", v["numbers"])
  assert all(p["status"] == "done" for ps in saved["results"]["phases"].values() for p in ps)
  second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert second.returncode == 0 and "launching" not in second.stdout
  for log in workdir.glob("*/sweep_log.txt"):  # the single-run phases' own sweep processes
    assert log.read_text().count("launching") == 1
