"""Teacher probe (motif_jax/probe): equal counted budgets, pure ranking, rank correlations, the
third toy teacher, resume, and the smoke probe's ranking (slow)."""

import dataclasses
import json
import random

import jax
import numpy as np
import pytest

from configs import common, probe as probe_config
from motif_jax import checkpoint
from motif_jax.data import curate, toy_corpus
from motif_jax.data.config import DataConfig
from motif_jax.data.records import Record
from motif_jax.data.toy_problems import make_problem
from motif_jax.data.traces import split_trace
from motif_jax.model import init_params
from motif_jax.probe import budget, rank, run_probe
from model_helpers import tiny_config


@pytest.fixture(scope="module")
def data_cfg():
  cfg = DataConfig.from_config_dict(common.data())
  toy = dataclasses.replace(cfg.toy, problems=12, reference_size=10, ladder="small",
                            min_steps=1, max_steps=3, heldout_per_difficulty=1)
  return dataclasses.replace(cfg, toy=toy)


# ---- equal token budgets -----------------------------------------------------------------------

def _records(style: str, n: int) -> list[Record]:
  """n prompts, answered tersely or verbosely (same prompts, different completion lengths)."""
  body = {"terse": "1. 2 + 2 = 4", "verbose": "1. Well, adding two and two carefully gives 4."}
  return [Record(prompt=f"Problem {i}: what is 2 + 2?", response=f"<think>\n{body[style]}\n"
                 "</think>\n\\boxed{4}", domain="arith", source=style, answer="4")
          for i in range(n)]


def test_budgets_are_equal_and_counted_on_the_rows(data_cfg):
  tok = curate.make_tokenizer(data_cfg)
  out = {style: budget.budgeted_batches(_records(style, 40), tok, data_cfg.template,
                                        token_budget=777, seq_len=64, batch_size=4,
                                        packing_bins=4, seed=0)
         for style in ("terse", "verbose")}
  for b in out.values():
    counted = sum(int(batch["loss_mask"].sum()) for batch in b.batches)
    assert b.loss_tokens == counted == 777
    assert all(batch["tokens"].shape == (4, 64) for batch in b.batches)
    # loss only on real tokens: padding rows and padding positions carry no loss
    assert all(((batch["segment_ids"] == 0) & (batch["loss_mask"] == 1)).sum() == 0
               for batch in b.batches)
  # The verbose teacher spends the same budget on fewer prompts.
  assert out["verbose"].examples < out["terse"].examples


def test_budget_cuts_the_last_example_and_names_the_field(data_cfg):
  tok = curate.make_tokenizer(data_cfg)
  records = _records("terse", 3)
  per = budget.completion_tokens(records[:1], tok, data_cfg.template, 64)
  examples = budget.budget_examples(records, tok, data_cfg.template, token_budget=per + 5,
                                    seq_len=64)
  # The first example whole, the second one's first 5 completion tokens (a prefix of its mask).
  assert [int(e["loss_mask"].sum()) for e in examples] == [per, 5]
  mask = examples[1]["loss_mask"]
  first = int(np.argmax(mask))
  assert mask[first:first + 5].tolist() == [1] * 5 and mask[first + 5:].sum() == 0
  with pytest.raises(ValueError, match="probe.token_budget"):
    budget.budget_examples(records, tok, data_cfg.template, token_budget=10 * per, seq_len=64)


def test_prompt_order_is_the_same_for_every_candidate():
  terse, verbose = _records("terse", 30), _records("verbose", 30)
  random.Random(0).shuffle(verbose)
  assert ([r.prompt for r in budget.prompt_order(terse, 3)] ==
          [r.prompt for r in budget.prompt_order(verbose, 3)])
  assert budget.prompt_order(terse, 3) != budget.prompt_order(terse, 4)


# ---- ranking and correlations (pure, hand-built inputs) ----------------------------------------

def _cand(name, nll, style, verify, p1, p2, reward, form):
  return {"name": name, "nll": nll, "style_distance": style, "verify_rate": verify,
          "probe_pass@1": p1, "probe_pass@2": p2, "probe_mean_reward": reward,
          "probe_format_ok": form}


CANDS = [_cand("b", 0.9, 2.0, 1.0, 0.30, 0.50, 0.40, 0.7),
         _cand("a", 0.5, 1.0, 1.0, 0.30, 0.60, 0.30, 0.7),  # ties b on pass@1, wins on pass@2
         _cand("c", 2.0, 9.0, 0.8, 0.10, 0.90, 0.90, 0.2)]  # best pass@2, reward; worst pass@1


def test_ranking_is_a_pure_function_of_the_measured_values():
  assert rank.ranking(CANDS, "pass@1") == ["a", "b", "c"]
  for perm in ([2, 0, 1], [1, 2, 0], [0, 2, 1]):
    assert rank.ranking([CANDS[i] for i in perm], "pass@1") == ["a", "b", "c"]
  # Equal pass@1 and pass@k: mean reward decides; renaming does not change who wins.
  tied = [dict(CANDS[0], **{"probe_pass@2": 0.6}), CANDS[1], CANDS[2]]
  assert rank.ranking(tied, "pass@1") == ["b", "a", "c"]
  renamed = [dict(c, name={"a": "z", "b": "y", "c": "x"}[c["name"]]) for c in CANDS]
  assert rank.ranking(renamed, "pass@1") == ["z", "y", "x"]
  # All probe values equal: the order falls back to names, but the ranks are tied.
  same = [dict(c, **{"probe_pass@1": 0.0, "probe_pass@2": 0.0, "probe_mean_reward": 0.0})
          for c in CANDS]
  assert rank.ranking(same, "pass@1") == ["a", "b", "c"]
  assert rank.probe_ranks(same, "pass@1") == [2.0, 2.0, 2.0]
  # Ranked by mean reward first: c (0.9) > b (0.4) > a (0.3), whatever pass@1 says.
  assert rank.ranking(CANDS, "mean_reward") == ["c", "b", "a"]
  assert rank.probe_ranks(CANDS, "mean_reward") == [2.0, 3.0, 1.0]
  # By well-formed share: a and b tie at 0.7 (pass@1 ties too, pass@2 decides), c last.
  assert rank.ranking(CANDS, "format_ok") == ["a", "b", "c"]
  with pytest.raises(ValueError, match="probe.rank_by"):
    rank.ranking(CANDS, "pass@3")
  assert all(v is None for m in rank.correlations(same, "pass@1").values() for v in m.values())


def test_rank_correlations_match_hand_computed_values():
  # x = 1 2 3, y = 1 3 2: d^2 = 0 + 1 + 1, rho = 1 - 6 * 2 / (3 * 8) = 0.5;
  # pairs (12: +) (13: +) (23: -): tau = (2 - 1) / 3.
  assert rank.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
  assert rank.kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
  # Ties in x = 1 1 2 (ranks 1.5 1.5 3) against y = 1 2 3: rho = 1.5 / sqrt(1.5 * 2);
  # tau-b: 2 concordant, 0 discordant, 1 pair tied in x: 2 / sqrt((3 - 1) * 3).
  assert rank.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / np.sqrt(3.0))
  assert rank.kendall([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / np.sqrt(6.0))
  assert rank.spearman([4, 3, 2, 1], [1, 2, 3, 4]) == pytest.approx(-1.0)
  assert rank.spearman([1, 1, 1], [1, 2, 3]) is None and rank.kendall([5], [5]) is None
  assert rank.ranks([0.3, 0.1, 0.3]) == [1.5, 3.0, 1.5]
  assert rank.ranks([0.3, 0.1, 0.3], higher_is_better=False) == [2.5, 1.0, 2.5]


def test_correlations_orient_each_cheap_measure_against_the_probe():
  corr = rank.correlations(CANDS, "pass@1")  # probe order a > b > c
  # lower NLL a 0.5 < b 0.9 < c 2.0 and style 1 < 2 < 9: the probe's order exactly
  assert corr["nll"] == {"spearman": pytest.approx(1.0), "kendall": pytest.approx(1.0)}
  assert corr["style_distance"]["spearman"] == pytest.approx(1.0)
  # verify 1.0 1.0 0.8: a and b tie; goodness ranks 1.5 1.5 3 vs probe 1 2 3
  assert corr["verify_rate"]["spearman"] == pytest.approx(1.5 / np.sqrt(3.0))
  ranks = rank.measure_ranks(CANDS, "pass@1")
  assert ranks["verify_rate"] == {"b": 1.5, "a": 1.5, "c": 3.0}
  assert ranks["probe"] == {"b": 2.0, "a": 1.0, "c": 3.0}
  line = rank.recommendation(CANDS, corr, "pass@1")
  assert line.startswith("Scale `a`") and "(a) student NLL, (b) style distance" in line
  worse = [dict(c, nll=-c["nll"], style_distance=-c["style_distance"]) for c in CANDS]
  assert rank.correlations(worse, "pass@1")["nll"]["spearman"] == pytest.approx(-1.0)


# ---- the third toy teacher ---------------------------------------------------------------------

def test_verbose_teacher_is_target_format_and_granularity_in_more_words(data_cfg):
  toy = data_cfg.toy
  by_teacher = {t: toy_corpus.teacher_records(toy, t) for t in toy_corpus.TEACHERS}
  prompts = [[r.prompt for r in recs] for recs in by_teacher.values()]
  assert prompts[0] == prompts[1] == prompts[2]  # the same prompts for every teacher
  for aligned, verbose in zip(by_teacher[toy_corpus.ALIGNED], by_teacher[toy_corpus.VERBOSE]):
    a = split_trace(aligned.response, data_cfg.template, data_cfg.trace)
    v = split_trace(verbose.response, data_cfg.template, data_cfg.trace)
    assert v.think_closed and v.answer == a.answer == aligned.answer  # right and well formed
    assert len(v.steps) == len(a.steps) == aligned.meta["difficulty"]  # one step per operation
    assert all(s.startswith(f"{i + 1}. ") for i, s in enumerate(v.steps))
    assert len(verbose.response) > 2.5 * len(aligned.response)
  problem = make_problem(random.Random(1), "code", 2, "small")
  code = toy_corpus.verbose_response(problem, random.Random(0))
  assert "```python\ndef f(xs):" in code and code.count("\n1. ") == 1
  # Opt-in: the default corpus and the teacher sets the curation uses are unchanged.
  default = toy_corpus.corpus(toy)
  assert toy_corpus.VERBOSE not in {r.source for r in default}
  assert {r.source for r in toy_corpus.corpus(toy, toy_corpus.TEACHERS)} == set(
      toy_corpus.TEACHERS)
  misaligned = {r.meta["problem_id"]: r.response for r in default
                if r.source == toy_corpus.MISALIGNED and "duplicate" not in r.meta}
  assert misaligned == {r.meta["problem_id"]: r.response
                        for r in by_teacher[toy_corpus.MISALIGNED]}


# ---- run_probe on a tiny random student: counted budgets, outputs, resume ----------------------

def _tiny_probe_config(student: str, candidates: str = "toy"):
  config = probe_config.get_config("smoke")
  config.student = student
  config.candidates = candidates
  config.data.tokenizer = ""  # bytes: the random tiny student has 512 vocabulary rows
  config.data.toy.update(dict(problems=6, reference_size=6, heldout_per_difficulty=1,
                              max_steps=2))
  config.data.seq_len = 96
  config.nll_batch_size = 8
  config.probe.update(dict(token_budget=200, epochs=2, seq_len=96, batch_size=2))
  config.eval.update(dict(max_new_tokens=4, num_samples=2, ks="1,2", prompt_batch=8))
  return config


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
  cfg = dataclasses.replace(tiny_config(), d_model=32, num_layers=1, num_heads=5,
                            num_kv_heads=2, head_dim=8, d_ff=64, scan_unroll=1)
  path = tmp_path_factory.mktemp("student") / "params"
  checkpoint.replace_params(path, cfg, init_params(jax.random.key(0), cfg))
  return str(path)


def test_run_probe_counts_equal_budgets_writes_the_report_and_resumes(tiny_student, tmp_path):
  config = _tiny_probe_config(tiny_student)
  first = run_probe(config, str(tmp_path), log=lambda _: None)
  names = [c["name"] for c in first["candidates"]]
  assert names == list(toy_corpus.TEACHERS)
  for c in first["candidates"]:
    assert c["loss_tokens"] == 200 and c["trained_tokens"] == 2 * 200  # counted by sft_step
    assert set(c) >= {"nll", "style_distance", "verify_rate", "probe_pass@1", "probe_pass@2"}
    assert c["nll"] > 0 and c["style_distance"] >= 0 and 0 <= c["verify_rate"] <= 1
  by = {c["name"]: c for c in first["candidates"]}
  assert by[toy_corpus.ALIGNED]["verify_rate"] == by[toy_corpus.VERBOSE]["verify_rate"] == 1.0
  assert by[toy_corpus.ALIGNED]["style_distance"] < by[toy_corpus.MISALIGNED]["style_distance"]
  # The verbose teacher spends the same budget on fewer traces.
  assert by[toy_corpus.VERBOSE]["budget_examples"] < by[toy_corpus.ALIGNED]["budget_examples"]
  assert sorted(first["ranking"]) == sorted(names)
  assert set(first["correlations"]) == {"nll", "style_distance", "verify_rate"}
  saved = json.loads((tmp_path / "probe.json").read_text())
  assert saved["ranking"] == first["ranking"]
  assert "Spearman" in (tmp_path / "probe.md").read_text()
  assert all((tmp_path / f"{m}_vs_probe.png").stat().st_size > 0 for m in rank.CHEAP)

  # Resume: finished candidates are skipped; a removed result is measured again.
  (tmp_path / "candidates" / toy_corpus.VERBOSE / "result.json").unlink()
  logs = []
  second = run_probe(config, str(tmp_path), log=logs.append)
  skipped = [line.split(":")[0] for line in logs if "finished before, skipped" in line]
  assert skipped == [toy_corpus.ALIGNED, toy_corpus.MISALIGNED]
  assert any(line.startswith(f"{toy_corpus.VERBOSE}: nll") for line in logs)
  strip = lambda c: {k: v for k, v in c.items() if k != "seconds"}  # noqa: E731
  assert [strip(c) for c in second["candidates"]] == [strip(c) for c in first["candidates"]]


def test_config_errors_name_the_field(tiny_student, tmp_path):
  with pytest.raises(ValueError, match="candidates item .*missing.jsonl is not a file"):
    run_probe(_tiny_probe_config(tiny_student, "missing.jsonl"), str(tmp_path))
  config = _tiny_probe_config(tiny_student)
  config.data.tokenizer = "toy"  # 1,017 ids against 512 rows
  with pytest.raises(ValueError, match=r"model.vocab_size=512 is smaller than .* data.tokenizer"):
    run_probe(config, str(tmp_path / "vocab"), log=lambda _: None)
  config = _tiny_probe_config(tiny_student)
  config.probe.token_budget = 10 ** 7
  with pytest.raises(ValueError, match="probe.token_budget"):
    run_probe(config, str(tmp_path / "big"), log=lambda _: None)


# ---- the smoke probe (about 3 minutes on an idle 2-core CPU) -----------------------------------

@pytest.mark.slow
def test_smoke_probe_ranks_the_aligned_teacher_above_the_misaligned(tmp_path):
  out = run_probe(probe_config.get_config("smoke"), str(tmp_path), log=lambda _: None)
  cands = {c["name"]: c for c in out["candidates"]}
  key = lambda name: rank.probe_key(cands[name], out["rank_by"])[:-1]  # noqa: E731
  # First, and strictly better on measured probe values (not by the name tie-break); the
  # misaligned teacher last (seed 0; README: seed 2 swaps verbose and misaligned).
  assert out["ranking"] == [toy_corpus.ALIGNED, toy_corpus.VERBOSE, toy_corpus.MISALIGNED]
  assert key(toy_corpus.ALIGNED) < key(toy_corpus.VERBOSE)
  assert key(toy_corpus.ALIGNED) < key(toy_corpus.MISALIGNED)
  assert all(c["trained_tokens"] == 2 * out["token_budget"] for c in cands.values())


def test_toy_student_trains_on_one_reference_path_even_with_a_comma_in_the_workdir(
    tmp_path, monkeypatch):
  """student=toy trains on WORKDIR/student/target_sample.jsonl: one path, not split at a comma
  of the workdir's name into two missing files."""
  from motif_jax.probe import run as probe_run
  seen = {}

  def fake_train(config, workdir, log):
    seen["inputs"] = DataConfig.from_config_dict(config.data).inputs
    seen["workdir"] = workdir

  monkeypatch.setattr(probe_run.trainer, "train", fake_train)
  config = _tiny_probe_config("toy")
  workdir = tmp_path / "probe,v2"
  probe_run.student_dir(config, probe_run.ProbeRun.from_config_dict(config), workdir,
                        lambda _: None)
  reference = workdir / probe_run.STUDENT / "target_sample.jsonl"
  assert seen["inputs"] == (str(reference),)
  assert reference.stat().st_size > 0


@pytest.mark.parametrize("variant", [None, "smoke"])
def test_probe_reads_traces_with_the_toy_students_own_tokenizer(variant):
  """The toy student trains on toy words; the probe's NLL, budgets and SFT must tokenize alike
  (bytes would fit its vocabulary and silently mean other tokens)."""
  config = probe_config.get_config(variant)
  assert config.data.tokenizer == config.student_sft.data.tokenizer == "toy"
