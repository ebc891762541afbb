"""Evaluation: pass@k against brute force, majority voting by math equivalence and its tie rule,
metric aggregation on hand-built rows, and `evaluate` at temperature 0 against greedy decoding
(step-by-step argmax of the full forward) scored by hand."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from motif_jax import evaluation
from motif_jax.data.records import Record
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import ByteTokenizer
from motif_jax.model.transformer import forward_logits
from motif_jax.rl import rewards
from model_helpers import random_params, tiny_config


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
  """Share of the k-subsets of n samples (c correct) that hold at least one correct sample."""
  samples = [True] * c + [False] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_brute_force_enumeration_vectorized():
  triples = [(n, c, k) for n in range(1, 8) for c in range(n + 1) for k in range(1, n + 1)]
  n, c, k = (np.array(x) for x in zip(*triples))
  got = evaluation.pass_at_k(n, c, k)
  assert got.shape == (len(triples),)
  np.testing.assert_allclose(got, [_brute_pass_at_k(*t) for t in triples], rtol=0, atol=1e-12)
  # Large n: no factorial overflow; matches exact integer arithmetic.
  for n_, c_, k_ in ((1000, 1, 1), (500, 3, 100), (2000, 10, 64)):
    exact = 1 - math.comb(n_ - c_, k_) / math.comb(n_, k_)
    assert evaluation.pass_at_k(n_, c_, k_) == pytest.approx(exact, rel=1e-12)
  assert evaluation.pass_at_k(1000, 1, 1) == pytest.approx(0.001)
  with pytest.raises(ValueError):
    evaluation.pass_at_k(4, 5, 1)
  with pytest.raises(ValueError):
    evaluation.pass_at_k(4, 1, 5)


def test_majority_vote_counts_equivalent_answers_as_one_and_breaks_ties_by_first_occurrence():
  # "7" is the most frequent string, but 0.5 written three ways is the larger class.
  assert evaluation.majority_vote(["7", "0.5", "7", "\\frac{1}{2}", None, "1/2"]) == "0.5"
  # Tie (2 vs 2): the class whose first member comes first wins, whatever the order after it.
  assert evaluation.majority_vote(["\\frac{1}{2}", "3", "3", "0.5"]) == "\\frac{1}{2}"
  assert evaluation.majority_vote(["3", "\\frac{1}{2}", "0.5", "3"]) == "3"
  assert evaluation.majority_index([None, "2", "2.0", "3"]) == 1
  assert evaluation.majority_vote([None, None]) is None
  # A custom equivalence (exact text): 0.5 and 1/2 are then different answers.
  same = lambda a, b: a == b
  assert evaluation.majority_vote(["0.5", "1/2", "2", "2"], equivalent=same) == "2"


def _row(pid, correct, *, answer="1", domain="arith", difficulty=2, length=5, finish="stop",
         format_ok=True, reward=None):
  return dict(prompt_id=pid, sample=0, domain=domain, difficulty=difficulty, completion="",
              answer=answer, reward=float(correct) if reward is None else reward,
              correct=correct, format_ok=format_ok, details={"exact": {}}, length=length,
              finish_reason=finish)


def test_aggregate_metrics_on_hand_built_rows():
  rows = [_row("a", True, answer="4"), _row("a", False, answer="5"), _row("a", True, answer="4"),
          _row("a", False, answer="5", length=9, finish="length", format_ok=False),
          _row("b", False, answer="1", domain="lists", difficulty=3),
          _row("b", False, answer="2", domain="lists", difficulty=3),
          _row("b", True, answer="3", domain="lists", difficulty=3),
          _row("b", False, answer="2", domain="lists", difficulty=3)]
  m = evaluation.aggregate(rows, ks=(1, 2, 4))
  overall = m["overall"]
  assert (overall["prompts"], overall["samples"]) == (2, 8)
  # a: n=4, c=2 -> pass@1 0.5, pass@2 1 - C(2,2)/C(4,2) = 5/6, pass@4 1; b: c=1 -> 0.25, 0.5, 1.
  assert overall["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
  assert overall["pass@2"] == pytest.approx((5 / 6 + 0.5) / 2)
  assert overall["pass@4"] == 1.0
  # a: tie 4 vs 5, "4" first -> correct; b: "2" wins (2 votes) -> wrong.
  assert overall["maj@4"] == 0.5
  assert overall["mean_length"] == pytest.approx((5 * 7 + 9) / 8)
  assert overall["truncation_rate"] == overall["format_error_rate"] == 1 / 8
  assert m["by_domain"]["lists"]["pass@1"] == 0.25 and m["by_difficulty"]["2"]["maj@4"] == 1.0
  # Prompts without a reference answer (code) are left out of the vote.
  assert "maj@4" not in evaluation.aggregate(rows, ks=(1,), answers={"a": None})["overall"]


def _first_char(text, record, context=rewards.Context()):
  """A verifier for the test: correct when the completion starts with record.answer."""
  body = text.removeprefix(context.template.think_open)
  return rewards.Reward(float(body[:1] == record.answer), {})


@pytest.fixture
def first_char_reward():
  rewards.register("first_char", _first_char, verifier=True)
  yield rewards.RewardConfig(terms={"toy": "first_char"}, default_terms="", overlong_window=4,
                             verifier_timeout_s=5.0, code_timeout_s=5.0, code_memory_mb=256,
                             code_allow_weak_isolation=False, max_workers=1)
  del rewards.REWARDS["first_char"]


def _greedy_reference(params, cfg, prompt, max_new, stop_ids, width=64):
  """Step-by-step argmax of the full forward pass (no KV cache): (tokens, finished)."""
  tokens = list(prompt)
  for _ in range(max_new):
    padded = jnp.asarray([tokens + [0] * (width - len(tokens))], jnp.int32)  # causal: ignored
    token = int(jnp.argmax(forward_logits(params, padded, cfg)[0, len(tokens) - 1]))
    tokens.append(token)
    if token in stop_ids:
      return tokens[len(prompt):], True
  return tokens[len(prompt):], False


def test_evaluate_at_temperature_zero_equals_greedy_decoding_scored_by_hand(first_char_reward):
  cfg = tiny_config("gqa")
  params = random_params(cfg, seed=3, scale=0.5)
  template = ChatTemplate()
  tokenizer = ByteTokenizer(template.special_tokens())
  prompts = ["Start with 3. Add 4.", "Reverse [1, 2].", "Hi", "What is 2 + 2?"]
  max_new, stop = 6, [tokenizer.token_id(template.eos)]
  texts, finished = [], []
  for p in prompts:
    ids, done = _greedy_reference(params, cfg, tokenizer.encode(template.prompt(p)), max_new,
                                  stop)
    finished.append(done)
    body = ids[:-1] if done else ids
    texts.append(tokenizer.decode([i for i in body if i < tokenizer.vocab_size]))
  # Hand scoring: prompts 0 and 2 expect their greedy first character, 1 and 3 something else.
  answers = [t[:1] if i % 2 == 0 else "\u2603" for i, t in enumerate(texts)]
  records = [Record(prompt=p, response="-", domain="toy", source="test", answer=a,
                    meta={"id": f"p{i}", "difficulty": 1 + i % 2})
             for i, (p, a) in enumerate(zip(prompts, answers))]
  by_hand = np.mean([t[:1] == a for t, a in zip(texts, answers)])
  eval_cfg = evaluation.EvalConfig(num_samples=2, max_new_tokens=max_new, temperature=0.0,
                                   top_p=1.0, top_k=0, ks=(1, 2), prompt_batch=2, seed=0)
  batches = []
  with rewards.Scorer(first_char_reward) as scorer:
    result = evaluation.evaluate(params, records, eval_cfg, model=cfg, tokenizer=tokenizer,
                                 template=template, scorer=scorer, on_rows=batches.append)
  assert by_hand == 0.5 and result.metrics["overall"]["pass@1"] == by_hand
  assert [len(b) for b in batches] == [4, 4]  # prompt_batch=2 prompts x 2 samples
  assert [r["prompt_id"] for r in result.rows] == ["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3"]
  assert [r["sample"] for r in result.rows] == [0, 1] * 4
  for i, row in enumerate(result.rows):
    assert row["completion"] == template.think_open + texts[i // 2]
    assert row["finish_reason"] == ("stop" if finished[i // 2] else "length")
  assert result.metrics["by_difficulty"]["1"]["pass@1"] == 1.0  # prompts 0 and 2
  # Resume: prompts already done are not sampled again.
  with rewards.Scorer(first_char_reward) as scorer:
    rest = evaluation.evaluate(params, records, eval_cfg, model=cfg, tokenizer=tokenizer,
                               template=template, scorer=scorer, skip=frozenset({"p0", "p2"}))
  assert [r["prompt_id"] for r in rest.rows] == ["p1", "p1", "p3", "p3"]
  assert [r["completion"] for r in rest.rows] == [r["completion"] for r in result.rows
                                                  if r["prompt_id"] in ("p1", "p3")]
