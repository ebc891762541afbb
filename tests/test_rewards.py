"""Rewards: each term on hand-built completions, per-domain combination, and the worker pools
(a hanging or crashing verifier scores 0 with a reason within its deadline, off the main thread);
the toy code domain graded by its unit tests."""

import dataclasses
import os
import threading
import time

import pytest

from motif_jax.data import toy_corpus
from motif_jax.data.records import Record
from motif_jax.data.toy_problems import Problem, code_solution, code_tests
from motif_jax.rl import rewards
from motif_jax.rl.rewards import Context, RewardConfig, Scorer

# Light imports only at module level: pool workers import this module to find _hang and _crash.

GOOD = "<think>\n1. 7 + 5 = 12\n</think>\n\\boxed{12}"


def _record(domain="arith", answer="12", tests=()):
  return Record(prompt="p", response="r", domain=domain, source="hand", answer=answer,
                tests=tests)


def _config(**overrides):
  values = dict(terms={"math": "math:1.0,format:0.1", "arith": "exact,format:0.5,overlong:2"},
                default_terms="exact", overlong_window=4, verifier_timeout_s=2.0,
                code_timeout_s=5.0, code_memory_mb=512,
                code_allow_weak_isolation=False, max_workers=2)
  return RewardConfig(**{**values, **overrides})


def test_math_reward_by_equivalence_not_by_text():
  math = rewards.bound("math", _config())
  half = _record("math", answer="\\frac{1}{2}")
  assert math("<think>\nx\n</think>\nso \\boxed{0.5}", half).score == 1.0
  assert math("<think>\nx\n</think>\n\\boxed{\\frac{2}{4}}", _record("math", "0.5")).score == 1.0
  wrong = math("<think>\nx\n</think>\n\\boxed{0.6}", half)
  assert wrong.score == 0.0 and wrong.details["reason"] == "wrong_answer"
  # An answer inside an unclosed think block is no answer.
  assert math("<think>\nx \\boxed{0.5}", half).details["reason"] == "no_extracted_answer"
  # Off the main thread math-verify's signal-based timeout is off instead of raising.
  off_main = []
  thread = threading.Thread(
      target=lambda: off_main.append(math("<think>\nx\n</think>\n\\boxed{0.5}", half)))
  thread.start()
  thread.join()
  assert off_main[0].score == 1.0, off_main


def test_exact_reward_normalizes_whitespace_only():
  assert rewards.exact_reward(GOOD, _record(answer=" 12 ")).score == 1.0
  assert rewards.exact_reward(GOOD, _record(answer="12.0")).details["reason"] == "wrong_answer"
  lists = "<think>\na\n</think>\n\\boxed{[1,  2]}"
  assert rewards.exact_reward(lists, _record("lists", answer="[1, 2]")).score == 1.0
  assert rewards.exact_reward("<think>\na\n</think>\n12", _record()).details["reason"] == (
      "no_extracted_answer")


def test_steps_reward_checks_each_step_from_the_value_the_response_held():
  """Hand-checked: `Start with 14. Add 7, then subtract 2, then multiply by 3.` is 14 -> 21 ->
  19 -> 57. A slip in step 1 (23) fails that step only when step 2 continues from 23 correctly;
  a step that ignores the held value fails; missing and extra steps count as wrong."""
  arith = _record()
  arith = dataclasses.replace(arith, prompt="Start with 14. Add 7, then subtract 2, then "
                              "multiply by 3. What is the result?")

  def score(*steps, record=arith):
    text = "<think>\n" + "\n".join(f"{i + 1}. {s}" for i, s in enumerate(steps)) + (
        "\n</think>\n\\boxed{0}")
    return rewards.steps_reward(text, record).score
  assert score("14 + 7 = 21", "21 - 2 = 19", "19 * 3 = 57") == 1.0
  assert score("14 + 7 = 23", "23 - 2 = 21", "21 * 3 = 63") == pytest.approx(2 / 3)
  assert score("14 + 7 = 21", "23 - 2 = 21", "21 * 3 = 63") == pytest.approx(2 / 3)
  assert score("14 + 7 = 21", "21 - 2 = 19") == pytest.approx(2 / 3)
  assert score("14 + 7 = 21", "21 - 2 = 19", "19 * 3 = 57", "57 + 1 = 58") == 0.75
  assert score("14 + 7 = 21", "21 minus 2 is 19", "19 * 3 = 57") == pytest.approx(1 / 3)
  lists = dataclasses.replace(_record("lists"), prompt="Start with the list [3, 1, 2]. Reverse "
                              "the list, then append 4, then sort it in ascending order. What "
                              "is the final list?")
  assert score("reverse -> [2, 1, 3]", "append 4 -> [2, 1, 3, 4]", "sort ascending -> "
               "[1, 2, 3, 4]", record=lists) == 1.0
  assert score("reverse -> [2, 3, 1]", "append 4 -> [2, 3, 1, 4]", "sort ascending -> "
               "[1, 2, 3, 4]", record=lists) == pytest.approx(2 / 3)
  assert rewards.steps_reward(GOOD, _record()).details["reason"] == "not_a_toy_problem"


def test_toy_prompts_parse_back_to_their_problems_and_reference_steps_score_one():
  import random
  from motif_jax.data import toy_problems, toy_steps
  rng = random.Random(0)
  for domain in ("arith", "lists"):
    for ladder in ("small", "standard"):
      for _ in range(100):
        problem = toy_problems.make_problem(rng, domain, rng.randint(1, 6), ladder)
        assert toy_problems.parse_prompt(domain, problem.prompt) == problem
        values = toy_problems.run(problem)
        steps = tuple(f"{i + 1}. {toy_problems.step_text(problem, i, values[i], values[i + 1])}"
                      for i in range(problem.difficulty))
        assert toy_steps.step_accuracy(problem, steps) == 1.0
  assert toy_problems.parse_prompt("lists", "Start with 3. Add 1. What is the result?") is None


def test_format_reward_cases():
  cases = [
      (GOOD, Context(), 1.0, None),
      (GOOD, Context(finished=False), 0.0, "truncated"),
      ("<think>\n1. 7 + 5 = 12\n\\boxed{12}", Context(), 0.0, "unclosed_think"),
      ("<think>\n1. 7 + 5 = 12\n</think>\nthe answer is 12", Context(), 0.0,
       "no_extracted_answer"),
      ("\\boxed{12}", Context(), 0.0, "no_think_block"),
      ("<think>\nx\n</think>\n```python\ndef f(xs):\n    return xs\n```", Context(), 1.0, None),
  ]
  for text, context, score, reason in cases:
    reward = rewards.format_reward(text, _record(), context)
    assert (reward.score, reward.details.get("reason")) == (score, reason), text


def test_overlong_penalty_at_hand_computed_points():
  # Budget 10, window 4: no penalty up to 10 - 4 = 6 tokens, then (6 - L) / 4 down to -1 at 10.
  expected = {0: 0.0, 6: 0.0, 7: -0.25, 8: -0.5, 9: -0.75, 10: -1.0, 11: -1.0}
  for length, value in expected.items():
    assert rewards.overlong_penalty(length, 10, 4) == value, length
    reward = rewards.overlong_reward(GOOD, _record(), Context(length=length, max_new_tokens=10),
                                     window=4)
    assert reward.score == value
  with pytest.raises(ValueError, match="needs Context"):
    rewards.overlong_reward(GOOD, _record(), window=4)


def test_per_domain_combination_and_correctness():
  with Scorer(_config()) as scorer:
    texts = [GOOD, GOOD, "<think>\nx\n</think>\n\\boxed{0.5}", "<think>\nx"]
    records = [_record(), _record(answer="13"), _record("math", "1/2"), _record("lists", "[1]")]
    contexts = [Context(length=7, max_new_tokens=10), Context(length=3, max_new_tokens=10),
                Context(), Context(finished=False)]
    out = scorer.score(texts, records, contexts)
  # arith: exact + 0.5 * format + 2 * overlong(7 of 10, window 4) = 1 + 0.5 - 0.5
  assert out[0].score == pytest.approx(1.0) and out[0].details["correct"] is True
  assert out[0].details["terms"]["overlong"]["score"] == -0.25
  assert out[1].score == pytest.approx(0.5) and out[1].details["correct"] is False
  assert out[2].score == pytest.approx(1.1) and out[2].details["answer"] == "0.5"  # math + format
  assert out[3].score == 0.0 and out[3].details["terms"]["exact"]["reason"] == (
      "no_extracted_answer")  # lists: default terms (exact only)
  with pytest.raises(ValueError, match="rewards.terms.math: unknown reward 'maths'"):
    _config(terms={"math": "maths"})
  with pytest.raises(ValueError, match="rewards.terms.chess"):
    _config(default_terms="").terms_for("chess")


def _hang(text, record, context):
  time.sleep(120)


def _crash(text, record, context):
  os._exit(7)


@pytest.fixture
def slow_terms():
  rewards.register("hang", _hang, executor="process")
  rewards.register("crash", _crash, executor="process")
  yield
  del rewards.REWARDS["hang"], rewards.REWARDS["crash"]


def test_hanging_or_crashing_verifier_scores_zero_within_its_deadline_off_the_main_thread(
    slow_terms):
  cfg = _config(terms={"math": "math", "hang": "hang", "crash": "crash"}, verifier_timeout_s=1.5)
  half = _record("math", "1/2")
  items = [("<think>\nx\n</think>\n\\boxed{0.5}", half), ("", _record("hang")),
           ("", _record("crash"))] + [("<think>\nx\n</think>\n\\boxed{0.5}", half)] * 3
  # A real one: sympy evaluates the tower in C, where no signal interrupts it.
  items.append(("<think>\nx\n</think>\n\\boxed{9^{9^{9^{9}}}}", half))
  out, seconds = {}, {}

  def worker():
    with Scorer(cfg) as scorer:
      scorer.score([items[0][0]], [items[0][1]])  # start the pool (forkserver, math-verify)
      start = time.monotonic()
      out["rewards"] = scorer.score([t for t, _ in items], [r for _, r in items])
      seconds["batch"] = time.monotonic() - start

  thread = threading.Thread(target=worker)
  thread.start()
  thread.join(timeout=30)
  assert not thread.is_alive()
  reasons = [r.details["terms"][next(iter(r.details["terms"]))].get("reason")
             for r in out["rewards"]]
  assert reasons[1] == "timeout" and reasons[2] == "crash"
  assert [r.score for r in out["rewards"]] == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
  assert reasons[-1] == "timeout"
  # Hangs are abandoned at their deadline (the hang never returns and the sympy tower runs for
  # hours): the batch ends within a few deadlines, with slack for a loaded 2-core machine.
  assert seconds["batch"] < 8 * 1.5, seconds


def test_toy_code_problems_reference_solutions_pass_their_tests():
  problem = Problem("code", (3, 1, 4), (("reverse", 0), ("append", 5), ("sort_desc", 0)))
  assert code_solution(problem.ops) == ("def f(xs):\n    xs = xs[::-1]\n    xs = xs + [5]\n"
                                        "    xs = sorted(xs, reverse=True)\n    return xs\n")
  assert code_tests(problem) == ("assert f([3, 1, 4]) == [5, 4, 3, 1]", "assert f([]) == [5]",
                                 "assert f([5]) == [5, 5]",
                                 "assert f([2, 7, 1, 8, 2, 8]) == [8, 8, 7, 5, 2, 2, 1]")
  assert problem.prompt == (
      "Write a Python function f(xs) that returns the list of integers xs after these "
      "operations: reverse the list, then append 5, then sort it in descending order. "
      "For example, f([3, 1, 4]) returns [5, 4, 3, 1].")
  from data_helpers import small_config  # noqa: PLC0415 (imports grain)
  cfg = small_config(toy=dict(domains="code", problems=30, duplicate_rate=0.0, error_rate=0.3,
                              format_error_rate=0.0)).toy
  records = toy_corpus.corpus(cfg)
  assert {r.domain for r in records} == {"code"} and all(r.answer is None for r in records)
  outcomes = {}
  for r in records:  # run in this process: generated code, no sandbox needed
    namespace = {}
    program = rewards.parse(r.response, Context()).answer
    try:
      exec(program, namespace)  # noqa: S102
      for test in r.tests:
        exec(test, namespace)  # noqa: S102
      passed = True
    except AssertionError:
      passed = False
    outcomes.setdefault(r.source, []).append(passed)
  assert all(outcomes[toy_corpus.ALIGNED])
  assert 3 <= outcomes[toy_corpus.MISALIGNED].count(False) <= 15  # error_rate 0.3 of 30


def test_code_domain_is_opt_in_and_leaves_the_other_domains_unchanged():
  from data_helpers import small_config  # noqa: PLC0415
  base = small_config().toy
  with_code = dataclasses.replace(base, domains=("arith", "lists", "code"))
  plain = toy_corpus.problems(base, "train", 5)
  assert toy_corpus.problems(with_code, "train", 5)[:len(plain)] == plain
  assert {p.domain for p in toy_corpus.heldout(base)} == {"arith", "lists"}
  with pytest.raises(ValueError, match="data.toy.domains item 'chess'"):
    small_config(toy=dict(domains="arith,chess"))


def test_code_reward_runs_the_tests_in_the_sandbox():
  pytest.importorskip("motif_jax.rl.sandbox")
  problem = Problem("code", (3, 1, 4), (("reverse", 0), ("add", 2)))
  record = _record("code", answer=None, tests=problem.tests)
  right = toy_corpus.aligned_response(problem)
  wrong = right.replace("x + 2", "x + 3")
  loop = right.replace("    return xs", "    while True:\n        pass")
  code = rewards.bound("code", _config(code_timeout_s=2.0))
  assert code(right, record).score == 1.0
  failed = code(wrong, record)
  assert failed.score == 0.0 and failed.details["reason"] == "tests_failed"
  start = time.monotonic()
  looped = code(loop, record)
  assert looped.details["reason"] == "tests_timeout" and time.monotonic() - start < 2.0 + 3.0
  assert code("<think>\nx\n</think>\nno code", record).details["reason"] == "no_extracted_answer"


def test_code_reward_end_to_end_on_the_toy_code_corpus_agrees_with_running_the_tests():
  pytest.importorskip("motif_jax.rl.sandbox")
  from data_helpers import small_config  # noqa: PLC0415
  cfg = small_config(toy=dict(domains="code", problems=6, duplicate_rate=0.0, error_rate=0.5,
                              format_error_rate=0.2)).toy
  records = toy_corpus.corpus(cfg)
  expected = []
  for r in records:  # the oracle: the same program and tests run in this process
    program, namespace = rewards.parse(r.response, Context()).answer, {}
    try:
      exec(program, namespace)  # noqa: S102
      for test in r.tests:
        exec(test, namespace)  # noqa: S102
      expected.append(True)
    except (AssertionError, TypeError, SyntaxError):  # TypeError: no program extracted
      expected.append(False)
  assert 0 < sum(expected) < len(records)
  with Scorer(_config(terms={"code": "code,format:0.1"})) as scorer:
    out = scorer.score([r.response for r in records], records)
  assert [r.details["correct"] for r in out] == expected
  assert all(r.details["terms"]["code"]["isolation"] == "namespaces"
             for r, ok in zip(out, expected) if ok)
