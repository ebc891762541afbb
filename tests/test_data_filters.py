"""Alignment filters: each keeps exactly what its predicate accepts, with counters that add up."""

import dataclasses

import pytest

from motif_jax.data import curate, style, toy_corpus
from motif_jax.data.config import FILTER_NAMES
from motif_jax.data.filters import CountedFilter, make_check
from data_helpers import record, scored, small_config

ALIGNED = "<think>\n1. ab\n2. cd\n</think>\n\\boxed{3}"


def _mixed_items(cfg):
  """Toy traces of both teachers (with wrong answers, broken formats, duplicates) + hand cases."""
  hand = [record("no think at all \\boxed{3}"), record("<think>\n1. 1 + 2 = 3\n\\boxed{3}"),
          record("<think>\n</think>\n\\boxed{3}"), record("<think>\n1. a\n</think>\nthree"),
          record(ALIGNED, domain="code", answer=None, tests=("assert f() == 3",)),
          record(ALIGNED, domain="chess"), record(ALIGNED, answer="4")]
  return scored(toy_corpus.corpus(cfg.toy) + hand, cfg)


@pytest.fixture(scope="module")
def setup():
  # Tight verbosity / granularity bands so that every filter has something to drop here.
  cfg = small_config(toy=dict(problems=12, reference_size=30, duplicate_rate=0.2,
                              error_rate=0.3, format_error_rate=0.3))
  cfg = dataclasses.replace(cfg, filters=dataclasses.replace(
      cfg.filters, verify=dataclasses.replace(cfg.filters.verify, default=""),
      verbosity=dataclasses.replace(cfg.filters.verbosity, min_tokens=60, max_tokens=1500),
      granularity=dataclasses.replace(cfg.filters.granularity, max_steps=6)))
  items = _mixed_items(cfg)
  profile = style.measure_profile(scored(toy_corpus.reference(cfg.toy), cfg))
  return cfg, items, profile


@pytest.mark.parametrize("name", FILTER_NAMES)
def test_filter_keeps_exactly_what_its_predicate_accepts(setup, name):
  cfg, items, profile = setup
  f = CountedFilter(name, make_check(name, cfg.filters, profile))
  kept = curate.run_filters(items, [f])
  oracle = make_check(name, cfg.filters, profile)  # fresh (dedup state starts empty)
  expected = [item for item in items if oracle(item) is None]
  assert [id(x) for x in kept] == [id(x) for x in expected]
  assert 0 < len(kept) < len(items), "every filter should drop some and keep some here"
  counts = f.counts
  assert counts.seen == len(items) and counts.kept == len(kept)
  assert counts.seen == counts.kept + sum(counts.dropped().values())
  assert len(f.drops) == counts.seen - counts.kept
  for key in ("domain", "source"):
    groups = counts.by(key).values()
    assert sum(g["seen"] for g in groups) == counts.seen
    assert sum(g["kept"] for g in groups) == counts.kept
    assert all(g["seen"] == g["kept"] + g["dropped"] for g in groups)


def test_chained_filters_count_only_what_reaches_them(setup):
  cfg, items, profile = setup
  filters = [CountedFilter(n, make_check(n, cfg.filters, profile)) for n in cfg.filters.order]
  kept = curate.run_filters(items, filters)
  for before, after in zip(filters, filters[1:]):
    assert after.counts.seen == before.counts.kept
  assert filters[-1].counts.kept == len(kept)


def test_format_reasons():
  cfg = small_config()
  responses = {"no think \\boxed{1}": "no_think_block",
               "<think>\n1. a\n\\boxed{1}": "unclosed_think",
               "<think>\n \n</think>\\boxed{1}": "empty_think",
               "<think>\n1. a\n</think>\nno box": "no_final_answer",
               "<think>\n1. a\n</think>\n```python\nprint(1)\n```": None, ALIGNED: None}
  check = make_check("format", cfg.filters, None)
  for response, reason in responses.items():
    assert check(scored([record(response)], cfg)[0]) == reason, response


def test_verbosity_and_granularity_bands_hand_computed():
  cfg = small_config()
  # Byte tokens: think "\n1. ab\n2. cd\n" = 13, final "\n\\boxed{3}" = 10, so 23 in all, ratio
  # 1.3; two steps "1. ab", "2. cd" of 5 tokens each.
  item = scored([record(ALIGNED)], cfg)[0]
  stats = item.stats
  assert (stats.response_tokens, stats.num_steps, stats.mean_step_tokens) == (23, 2, 5)

  def check(name, **band):
    sub = dataclasses.replace(getattr(cfg.filters, name), **band)
    return make_check(name, dataclasses.replace(cfg.filters, **{name: sub}), None)(item)

  assert check("verbosity", min_tokens=23, max_tokens=23, min_ratio=1.3, max_ratio=1.3) is None
  assert check("verbosity", min_tokens=24, max_tokens=99) == "too_short"
  assert check("verbosity", min_tokens=1, max_tokens=22) == "too_long"
  assert check("verbosity", min_ratio=1.31) == "ratio_low"
  assert check("verbosity", max_ratio=1.29) == "ratio_high"
  assert check("granularity", min_steps=2, max_steps=2, min_step_tokens=5,
               max_step_tokens=5) is None
  assert check("granularity", min_steps=3, max_steps=9) == "too_few_steps"
  assert check("granularity", min_steps=1, max_steps=1) == "too_many_steps"
  assert check("granularity", min_step_tokens=5.5, max_step_tokens=9) == "steps_too_short"
  assert check("granularity", min_step_tokens=1, max_step_tokens=4.5) == "steps_too_long"


def test_verification_methods():
  cfg = small_config()
  check = make_check("verify", cfg.filters, None)
  cases = [
      (record(ALIGNED), None),  # arith: exact
      (record(ALIGNED, answer=" 3 "), None),  # whitespace does not matter
      (record(ALIGNED, answer="4"), "wrong_answer"),
      (record("<think>\na\n</think>\n\\boxed{[1,  2]}", domain="lists", answer="[1, 2]"), None),
      (record("<think>\na\n</think>\nso \\boxed{0.5}", domain="math", answer="\\frac{1}{2}"), None),
      (record("<think>\na\n</think>\n\\boxed{\\frac{2}{4}}", domain="math", answer="0.5"), None),
      (record("<think>\na\n</think>\n\\boxed{0.6}", domain="math", answer="1/2"), "wrong_answer"),
      (record(ALIGNED, domain="code", answer=None, tests=("assert f() == 3",)), None),
      (record(ALIGNED, domain="code", answer="3"), "no_tests"),
  ]
  for rec, reason in cases:
    assert check(scored([rec], cfg)[0]) == reason, rec


def test_style_rejects_the_misaligned_teacher_and_keeps_the_aligned_one_at_defaults():
  cfg = small_config(variant="", toy=dict(problems=40, duplicate_rate=0.0, error_rate=0.0,
                                          format_error_rate=0.0))
  profile = style.measure_profile(scored(toy_corpus.reference(cfg.toy), cfg))
  check = make_check("style", cfg.filters, profile)
  for teacher in (toy_corpus.ALIGNED, toy_corpus.MISALIGNED):
    items = scored(toy_corpus.corpus(cfg.toy, (teacher,)), cfg)
    reasons = [check(item) for item in items]
    assert len(items) == 80
    if teacher == toy_corpus.ALIGNED:
      assert reasons == [None] * 80
    else:
      assert all(r is not None and r.startswith("far_") for r in reasons), set(reasons)
  # Without step numbering (feature and format trait), step length alone still rejects them all.
  no_numbering = dataclasses.replace(
      profile, mean={k: v for k, v in profile.mean.items() if k != "numbered_fraction"},
      std={k: v for k, v in profile.std.items() if k != "numbered_fraction"})
  kwargs = dict(profile=no_numbering, max_distance=cfg.filters.style.max_distance,
                min_std=cfg.filters.style.min_std, min_format_rate=1.1)  # > 1: no format traits
  for teacher, reason in ((toy_corpus.ALIGNED, {None}),
                          (toy_corpus.MISALIGNED, {"far_log_mean_step_tokens"})):
    items = scored(toy_corpus.corpus(cfg.toy, (teacher,)), cfg)
    assert {style.check_style(item, **kwargs) for item in items} == reason


def test_style_profile_uses_the_target_nll_when_every_reference_trace_has_one():
  cfg = small_config()
  reference = scored(toy_corpus.reference(cfg.toy), cfg)
  with_nll = [item._replace(stats=dataclasses.replace(item.stats, nll=1.0 + 0.1 * (i % 3)))
              for i, item in enumerate(reference)]
  profile = style.measure_profile(with_nll)
  assert "nll" in profile.mean and "nll" not in style.measure_profile(reference).mean
  kwargs = dict(profile=profile, max_distance=4.0, min_std=0.1, min_format_rate=0.9)
  assert style.check_style(with_nll[0], **kwargs) is None
  surprising = with_nll[0]._replace(stats=dataclasses.replace(with_nll[0].stats, nll=3.0))
  assert style.check_style(surprising, **kwargs) == "far_nll"


def test_dedup_exact_after_normalization_and_near_duplicates():
  cfg = small_config()
  a = record("<think>\n1. 4 + 5 = 9\n2. 9 * 3 = 27\n3. 27 - 8 = 19\n</think>\n\\boxed{19}",
             prompt="Start with 4. Add 5, then multiply by 3, then subtract 8. What is the result?")
  same = dataclasses.replace(a, response=a.response.replace("\n", "\n  ").upper())
  near = dataclasses.replace(a, prompt=a.prompt + " Show your work.")
  other = record("<think>\n1. reverse -> [2, 1]\n</think>\n\\boxed{[2, 1]}",
                 prompt="Start with the list [1, 2]. Reverse the list. What is the final list?")
  f = CountedFilter("dedup", make_check("dedup", cfg.filters, None))
  kept = curate.run_filters(scored([a, same, near, other], cfg), [f])
  assert [item.record for item in kept] == [a, other]
  assert f.counts.dropped() == {"exact_duplicate": 1, "near_duplicate": 1}
