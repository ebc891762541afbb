"""The toy reasoning corpus: seeded, verifiable, two teachers, reference and held-out samples."""

import collections
import dataclasses

from motif_jax.data import toy_corpus
from motif_jax.data.toy_problems import Problem, run
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
