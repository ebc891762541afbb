"""The toy reasoning corpus: seeded, verifiable, two teachers, reference and held-out samples."""

import collections
import dataclasses
import random

import pytest

from motif_jax.data import toy_corpus
from motif_jax.data.toy_problems import LADDERS, Problem, make_problem, run
from data_helpers import scored, small_config


def test_problems_replay_by_hand():
  arith = Problem("arith", 7, (("add", 5), ("mul", 3), ("sub", 4)))
  assert run(arith) == [7, 12, 36, 32] and arith.answer == "32"
  assert arith.prompt == ("Start with 7. Add 5, then multiply by 3, then subtract 4. "
                          "What is the result?")
  assert toy_corpus.aligned_response(arith) == (
      "<think>\n1. 7 + 5 = 12\n2. 12 * 3 = 36\n3. 36 - 4 = 32\n</think>\n\\boxed{32}")
  lists = Problem("lists", (3, 1, 4),
                  (("reverse", 0), ("append", 5), ("sort", 0), ("drop_even", 0)))
  assert lists.answer == "[1, 3, 5]" and lists.difficulty == 4
  assert run(arith, slip=(1, 2))[-1] == 34  # 12 * 3 + 2 = 38, then - 4


def test_corpus_is_deterministic_and_seeded():
  cfg = small_config().toy
  assert toy_corpus.corpus(cfg) == toy_corpus.corpus(cfg)
  assert toy_corpus.corpus(cfg) != toy_corpus.corpus(dataclasses.replace(cfg, seed=1))


def test_teachers_answers_and_styles():
  cfg = small_config(toy=dict(problems=60, duplicate_rate=0.0, error_rate=0.2,
                              format_error_rate=0.1))
  items = scored(toy_corpus.corpus(cfg.toy), cfg)
  by_teacher = collections.defaultdict(list)
  for item in items:
    by_teacher[item.record.source].append(item)
  aligned, misaligned = by_teacher[toy_corpus.ALIGNED], by_teacher[toy_corpus.MISALIGNED]
  assert len(aligned) == len(misaligned) == 120
  # Aligned: always right, one numbered step per operation.
  assert all(i.trace.answer == i.record.answer for i in aligned)
  assert all(i.stats.num_steps == i.record.meta["difficulty"] for i in aligned)
  assert all(i.stats.numbered_fraction == 1.0 for i in aligned)
  # Misaligned: about 20% wrong and 10% broken, prose paragraphs several times longer.
  wrong = sum(i.trace.answer is not None and i.trace.answer != i.record.answer for i in misaligned)
  broken = sum(i.trace.answer is None for i in misaligned)
  assert 10 <= wrong <= 40 and 4 <= broken <= 24, (wrong, broken)
  mean = lambda xs, f: sum(map(f, xs)) / len(xs)
  assert mean(misaligned, lambda i: i.stats.response_tokens) > 3 * mean(
      aligned, lambda i: i.stats.response_tokens)
  assert mean(misaligned, lambda i: i.stats.mean_step_tokens) > 5 * mean(
      aligned, lambda i: i.stats.mean_step_tokens)


def test_reference_and_heldout_splits():
  cfg = small_config(toy=dict(heldout_per_difficulty=3)).toy
  train_prompts = {r.prompt for r in toy_corpus.corpus(cfg)}
  reference = toy_corpus.reference(cfg)
  assert len(reference) == 2 * cfg.reference_size
  assert {r.source for r in reference} == {toy_corpus.REFERENCE}
  heldout = toy_corpus.heldout(cfg)
  per = collections.Counter((p.domain, p.difficulty) for p in heldout)
  assert per == {(d, k): 3 for d in ("arith", "lists")
                 for k in range(cfg.min_steps, cfg.max_steps + 1)}
  assert not {p.prompt for p in heldout} & train_prompts
  assert len({p.prompt for p in heldout}) == len(heldout)


def test_standard_ladder_draws_the_default_corpus_problems():
  """The default ranges (drawn before ladders existed) give the same problems for a seed."""
  rng = random.Random(0)
  assert make_problem(rng, "arith", 3) == Problem("arith", 14, (("sub", 4), ("sub", 34),
                                                                ("sub", 27)))
  assert make_problem(rng, "lists", 3) == Problem("lists", (7, 5, 9, 3, 8), (
      ("sort_desc", 0), ("add", 3), ("drop_first", 0)))


def test_small_ladder_keeps_values_and_steps_in_its_ranges():
  ladder, rng = LADDERS["small"], random.Random(1)
  for _ in range(2000):
    arith = make_problem(rng, "arith", rng.randint(1, 4), "small")
    assert ladder.arith_start[0] <= arith.start <= ladder.arith_start[1]
    assert all(0 <= v <= ladder.arith_max for v in run(arith))
    for (kind, arg), before in zip(arith.ops, run(arith)):
      low, high = ladder.arith_mul if kind == "mul" else ladder.arith_arg
      assert low <= arg <= high and (kind != "mul" or before <= ladder.arith_mul_below)
    lists = make_problem(rng, "lists", rng.randint(1, 4), "small")
    assert ladder.list_len[0] <= len(lists.start) <= ladder.list_len[1]
    assert all(len(v) <= ladder.list_max_len for v in run(lists))
    assert all(ladder.list_arg[0] <= a <= ladder.list_arg[1] for k, a in lists.ops
               if k in ("append", "add"))


def test_ladder_is_chosen_by_the_toy_config_and_checked():
  cfg = small_config(toy=dict(ladder="small", min_steps=1, max_steps=2)).toy
  assert all(0 <= v <= 99 for p in toy_corpus.problems(cfg, "train", 50) if p.domain == "arith"
             for v in run(p))
  assert {p.difficulty for p in toy_corpus.heldout(cfg)} == {1, 2}
  with pytest.raises(ValueError, match=r"data.toy.ladder='tiny' must be one of"):
    small_config(toy=dict(ladder="tiny"))


def test_heldout_fails_with_the_field_to_change_when_training_uses_up_the_easy_problems():
  """The small ladder has about 540 one-step arithmetic prompts: 8,000 training problems of
  difficulty 1 take all of them, so no held-out one exists (this looped forever before)."""
  cfg = dataclasses.replace(small_config().toy, ladder="small", domains=("arith",),
                            problems=8000, min_steps=1, max_steps=1, heldout_per_difficulty=5)
  with pytest.raises(ValueError, match=r"data.toy: only \d+ held-out arith problems of "
                                       r"difficulty 1 .* lower data.toy.problems"):
    toy_corpus.heldout(cfg)
