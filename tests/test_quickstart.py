"""`make quickstart`'s entry point runs data -> SFT -> RL -> summary.json end to end (smoke size),
the summary's accuracies are the evaluations' own, and a second run resumes (skips every stage)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import rl as rl_config
from configs import sft as sft_config
from motif_jax.data import hybrid, toy_corpus
from motif_jax.data.config import DataConfig

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0", JAX_PLATFORMS="cpu")


def _quickstart(workdir: Path) -> str:
  run = subprocess.run([sys.executable, "-m", "experiments.quickstart", "--smoke",
                        f"--workdir={workdir}"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  return run.stdout


def _last_eval(path: Path) -> dict:
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  return [r for r in rows if "eval/accuracy" in r][-1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("quickstart")
  return workdir, _quickstart(workdir)


def test_quickstart_smoke_runs_every_stage(smoke_run):
  workdir, out = smoke_run
  for stage in ("== 1/4 data", "== 2/4 SFT", "== 3/4 RL", "== 4/4 held-out"):
    assert stage in out
  assert "teacher_misaligned" in out and "arith/d1" in out
  assert (workdir / "data" / "report.md").exists() and (workdir / "data" / "kept.jsonl").exists()
  assert (workdir / "sft" / "final" / "model_config.json").exists()
  assert (workdir / "sft" / "metrics.jsonl").read_text().count("loss/ce") == 4
  assert (workdir / "rl" / "final" / "model_config.json").exists()
  assert (workdir / "rl" / "metrics.jsonl").read_text().count("rl/reward") == 2


def test_summary_holds_each_evaluations_per_tier_accuracy(smoke_run):
  workdir, _ = smoke_run
  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary) == {"sft", "rl"}
  toy = DataConfig.from_config_dict(sft_config.get_config("smoke").data).toy
  tiers = [f"{d}/d{k}" for d in toy.domains for k in range(toy.min_steps, toy.max_steps + 1)]
  for stage in ("sft", "rl"):
    assert list(summary[stage]) == tiers  # domain, then difficulty order
    evaluation = _last_eval(workdir / stage / "metrics.jsonl")
    assert summary[stage] == {t: evaluation[f"eval/accuracy/{t}"] for t in tiers}
    assert all(0.0 <= v <= 1.0 for v in summary[stage].values())


def test_sft_set_is_the_kept_traces_with_the_answer_only_share(smoke_run):
  workdir, out = smoke_run
  kept = [json.loads(x) for x in (workdir / "data" / "kept.jsonl").read_text().splitlines()]
  sft = [json.loads(x) for x in (workdir / "data" / "sft.jsonl").read_text().splitlines()]
  assert len(sft) == len(kept)
  replaced = [b for a, b in zip(kept, sft) if a != b]
  assert all(b["response"] == hybrid.ANSWER_ONLY % b["answer"] for b in replaced)
  assert all({k: v for k, v in a.items() if k != "response"} ==
             {k: v for k, v in b.items() if k != "response"} for a, b in zip(kept, sft))
  assert f"{len(replaced)} of them answered without working (--answer_only=0.2)" in out


def test_sampled_summary_is_the_sampled_evaluations_per_tier_pass_rate(smoke_run):
  workdir, out = smoke_run
  sampled = json.loads((workdir / "sampled.json").read_text())
  assert set(sampled) == {"sft", "rl", "answer_only_share"}
  for stage in ("sft", "rl"):
    rows = [json.loads(x) for x in (workdir / f"eval_{stage}" / "samples.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 4 * len(sampled[stage])  # 4 samples per held-out problem (1 per tier)
    for tier, value in sampled[stage].items():
      hits = [r["correct"] for r in rows if f"{r['domain']}/d{r['difficulty']}" == tier]
      assert value == sum(hits) / len(hits)
    direct = sum(hybrid.answered_without_working(r["completion"]) for r in rows) / len(rows)
    assert sampled["answer_only_share"][stage] == direct
  assert "samples answered without working" in out


def test_answer_only_mix_replaces_the_drawn_share_and_rejects_bad_fractions(tmp_path):
  kept = tmp_path / "kept.jsonl"
  kept.write_text("".join(json.dumps({"prompt": f"p{i}", "response": f"<think>\nwork {i}\n"
                                      f"</think>\n\\boxed{{{i}}}", "answer": str(i)}) + "\n"
                          for i in range(400)))
  for fraction, low, high in ((0.0, 0, 0), (1.0, 400, 400), (0.2, 60, 100)):
    out = tmp_path / f"sft_{fraction}.jsonl"
    records, replaced = hybrid.answer_only_mix(str(kept), str(out), fraction, seed=0)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert records == 400 and low <= replaced <= high
    assert sum(hybrid.answered_without_working(r["response"]) for r in rows) == replaced
  with pytest.raises(ValueError, match="answer_only fraction"):
    hybrid.answer_only_mix(str(kept), str(tmp_path / "x.jsonl"), 1.5, seed=0)


@pytest.mark.parametrize("completion, expected", [
    ("<think>\n</think>\n\\boxed{3}", True),
    ("</think> \\boxed{3}", True),
    ("<think>\n3 + 4 = 7\n</think>\n\\boxed{7}", False),
    ("\\boxed{7}", False),  # no think block at all: a format error, not an answer-only reply
])
def test_answered_without_working(completion, expected):
  assert hybrid.answered_without_working(completion) is expected


def test_rerun_resumes_without_training_again(smoke_run):
  workdir, _ = smoke_run
  before = (workdir / "summary.json").read_text()
  sampled_before = (workdir / "sampled.json").read_text()
  lines = {s: (workdir / s / "metrics.jsonl").read_text() for s in ("sft", "rl")}
  out = _quickstart(workdir)
  assert out.count("done before") == 3  # data, SFT, RL
  assert (workdir / "summary.json").read_text() == before
  assert (workdir / "sampled.json").read_text() == sampled_before  # evaluations resumed
  assert {s: (workdir / s / "metrics.jsonl").read_text() for s in ("sft", "rl")} == lines


def test_rl_stage_starts_from_the_sft_ladder_and_model():
  """RL's prompts and held-out set are SFT's toy ladder; its model is the one SFT trains."""
  for variant in ("smoke", "quickstart"):
    sft, rl = sft_config.get_config(variant), rl_config.get_config(variant)
    assert rl.data.toy.to_dict() == sft.data.toy.to_dict()
    assert rl.model.to_dict() == sft.model.to_dict()
  quick = DataConfig.from_config_dict(sft_config.get_config("quickstart").data).toy
  assert quick.ladder == "small" and (quick.min_steps, quick.max_steps) == (1, 4)
  assert len(toy_corpus.heldout(quick)) == 2 * 4 * quick.heldout_per_difficulty


def test_evaluate_quickstart_variant_scores_the_quickstart_held_out_set_with_its_tokenizer():
  """configs/evaluate.py:quickstart reads a quickstart model as its trainer did: the same word
  tokenizer, the same held-out problems (the trainer's Evaluator) and answer budget."""
  from configs import evaluate as evaluate_config
  from motif_jax import evaluation
  from motif_jax.data.config import ToyConfig
  from motif_jax import typed_config
  config = evaluate_config.get_config("quickstart,greedy")
  sft = sft_config.get_config("quickstart")
  assert config.tokenizer == sft.data.tokenizer == "toy"
  assert config.eval.max_new_tokens == sft.train.max_new_tokens
  assert config.eval.temperature == 0.0 and config.eval.num_samples == 1
  toy = typed_config.build(ToyConfig, config.toy, "toy")
  trainer_set = evaluation.heldout_records(DataConfig.from_config_dict(sft.data),
                                           sft.train.eval_problems)
  assert [r.prompt for r in toy_corpus.heldout_records(toy)] == [r.prompt for r in trainer_set]
