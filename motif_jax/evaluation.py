"""Evaluation: pass@k, majority voting, and `evaluate` (sample n completions, score, aggregate).

    result = evaluate(params, records, cfg, model=model_cfg, tokenizer=tok, template=template,
                      scorer=rewards.Scorer(reward_cfg))
    result.rows     # one dict per completion: prompt id, completion, answer, reward, details...
    result.metrics  # {"overall": {...}, "by_domain": {...}, "by_difficulty": {...}}

Metrics over prompts (each with n = `num_samples` completions, c of them correct by the domain's
verifier term: math, exact or code): `pass@k` is the unbiased estimator 1 - C(n-c, k) / C(n, k)
averaged over prompts (pass@1 = the mean correctness); `maj@n` is the share of prompts whose
majority answer (`majority_vote`, equivalent answers counted as one) is correct, over prompts with
a reference answer (code prompts are graded by tests and have no answer to vote on). Over
completions: `mean_length` (generated tokens, the stop token included), `truncation_rate` (budget
ran out), `format_error_rate` (the `format` reward failed: unclosed think block, no extractable
answer or truncated), `mean_reward`.

`Evaluator` is the SFT trainer's held-out evaluation on the toy task: token loss on the held-out
traces and `evaluate` at temperature 0 with one sample (so `eval/accuracy` is greedy pass@1).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from motif_jax import sampling
from motif_jax.data import curate, packing, toy_corpus, verify
from motif_jax.data.config import DataConfig
from motif_jax.data.records import Record
from motif_jax.data.template import ChatTemplate
from motif_jax.model import ModelConfig
from motif_jax.rl import rewards
from motif_jax.sft import SFTConfig, sft_loss


def pass_at_k(n, c, k) -> np.ndarray:
  """Unbiased pass@k, 1 - C(n-c, k) / C(n, k), elementwise over broadcast arrays (float64).

  Product form (Chen et al. 2021): C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i), with no
  factorials to overflow; it is 0 (pass@k = 1) when n - c < k.
  """
  n, c, k = np.broadcast_arrays(*(np.asarray(x, np.int64) for x in (n, c, k)))
  if np.any((c < 0) | (c > n)) or np.any((k < 1) | (k > n)):
    raise ValueError("pass_at_k needs 0 <= c <= n and 1 <= k <= n")
  i = np.arange(1, int(n.max(initial=1)) + 1, dtype=np.float64)  # [m]
  in_range = (i > (n - c)[..., None]) & (i <= n[..., None])
  factors = np.where(in_range, 1.0 - k[..., None] / i, 1.0)
  return np.where(n - c < k, 1.0, 1.0 - np.prod(factors, axis=-1))


def majority_index(answers: Sequence[str | None], *,
                   equivalent: Callable[[str, str], bool] = verify.math_equivalent) -> int | None:
  """Index of the majority answer's first occurrence; None when no answer was extracted.

  Answers join the first class whose first member they are `equivalent` to (default:
  math-verify, so `0.5` and `\\frac{1}{2}` are one class); None answers do not vote. Ties go to
  the class whose first member comes first in `answers`.
  """
  classes: list[list[int]] = []
  for i, answer in enumerate(answers):
    if answer is None:
      continue
    for members in classes:
      if equivalent(answers[members[0]], answer):
        members.append(i)
        break
    else:
      classes.append([i])
  if not classes:
    return None
  best = max(classes, key=lambda m: (len(m), -m[0]))  # larger, then earlier first member
  return best[0]


def majority_vote(answers: Sequence[str | None], *,
                  equivalent: Callable[[str, str], bool] = verify.math_equivalent) -> str | None:
  """The majority answer (as first written), equivalent answers counted as one; see
  `majority_index` for the tie rule."""
  index = majority_index(answers, equivalent=equivalent)
  return None if index is None else answers[index]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  num_samples: int  # completions per prompt (n)
  max_new_tokens: int  # completion budget
  temperature: float  # 0 = greedy
  top_p: float
  top_k: int  # 0 = off
  ks: tuple[int, ...]  # pass@k reported, each <= num_samples (or "1,4,8")
  prompt_batch: int  # prompts per sampler call
  seed: int
  draft_tokens: int = 0  # n-gram speculative decoding in the sampler (0 = off)

  def __post_init__(self):
    ks = self.ks.split(",") if isinstance(self.ks, str) else self.ks
    object.__setattr__(self, "ks", tuple(sorted(set(int(k) for k in ks if str(k).strip()))))
    for name in ("num_samples", "max_new_tokens", "prompt_batch"):
      if getattr(self, name) < 1:
        raise ValueError(f"eval.{name}={getattr(self, name)!r} must be >= 1")
    if self.draft_tokens < 0:
      raise ValueError(f"eval.draft_tokens={self.draft_tokens!r} must be >= 0 (0 = off)")
    if not self.ks or not all(1 <= k <= self.num_samples for k in self.ks):
      raise ValueError(f"eval.ks={self.ks} must lie in [1, eval.num_samples={self.num_samples}]")


@dataclasses.dataclass(frozen=True)
class EvalResult:
  rows: list[dict[str, Any]]  # one per completion, prompt-major
  metrics: dict[str, Any]


def prompt_id(record: Record) -> str:
  """`meta.id` or `meta.problem_id` when the record has one, else a hash of the prompt."""
  for name in ("id", "problem_id"):
    if record.meta.get(name) not in (None, ""):
      return str(record.meta[name])
  return hashlib.sha1(record.prompt.encode("utf-8")).hexdigest()[:16]


def _completion_text(ids: np.ndarray, length: int, finished: bool, tokenizer,
                     template: ChatTemplate) -> str:
  """The response as Record.response holds it: the prompt's think tag (when the prompt ends with
  one) + decoded tokens, no stop.

  Ids beyond the tokenizer (a model's vocabulary is padded: 512 for 263 byte-level ids) decode to
  nothing.
  """
  body = ids[:length - 1] if finished else ids[:length]
  prefix = template.think_open if template.opens_think else ""
  return prefix + tokenizer.decode([int(i) for i in body if i < tokenizer.vocab_size])


def sample_and_score(params, records: Sequence[Record], cfg: EvalConfig, *, model: ModelConfig,
                     tokenizer, template: ChatTemplate, scorer: rewards.Scorer,
                     key: jax.Array) -> list[dict[str, Any]]:
  """`cfg.num_samples` completions of each record's prompt, scored: one row per completion."""
  prompts = [tokenizer.encode(template.record_prompt(r)) for r in records]
  stop = [i for i in (tokenizer.token_id(template.eos),) if i is not None]
  out = sampling.sample(params, prompts, model, num_samples=cfg.num_samples,
                        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        top_p=cfg.top_p, top_k=cfg.top_k, stop_ids=stop, key=key,
                        draft_tokens=cfg.draft_tokens)
  rows_records = [records[int(p)] for p in out.prompt_index]
  texts = [_completion_text(out.tokens[r], int(out.lengths[r]), bool(out.finished[r]), tokenizer,
                            template) for r in range(len(rows_records))]
  contexts = [rewards.Context(length=int(out.lengths[r]), max_new_tokens=cfg.max_new_tokens,
                              finished=bool(out.finished[r]), template=template)
              for r in range(len(rows_records))]
  scored = scorer.score(texts, rows_records, contexts)
  rows = []
  for r, (record, text, context, reward) in enumerate(zip(rows_records, texts, contexts, scored)):
    form = rewards.format_reward(text, record, context)
    rows.append(dict(
        prompt_id=prompt_id(record), sample=r % cfg.num_samples, domain=record.domain,
        difficulty=record.meta.get("difficulty"), completion=text,
        answer=reward.details["answer"], reward=reward.score,
        correct=bool(reward.details["correct"]), format_ok=form.score == 1.0,
        details=reward.details["terms"], length=context.length,
        finish_reason="stop" if context.finished else "length"))
  return rows


def evaluate(params, records: Sequence[Record], cfg: EvalConfig, *, model: ModelConfig, tokenizer,
             template: ChatTemplate, scorer: rewards.Scorer, skip: frozenset[str] = frozenset(),
             on_rows: Callable[[list[dict]], None] | None = None,
             progress: bool = False) -> EvalResult:
  """Sample and score every record whose `prompt_id` is not in `skip`, `cfg.prompt_batch`
  prompts per sampler call; `on_rows` receives each batch's rows as soon as they are scored.

  The key of a batch is fold_in(key(seed), index of its first record), so a resumed run draws
  what the uninterrupted run would have for the same batches.
  """
  todo = [(i, r) for i, r in enumerate(records) if prompt_id(r) not in skip]
  rows: list[dict[str, Any]] = []
  bar = tqdm(total=len(todo), desc="eval", unit="prompt", disable=not progress)
  base = jax.random.key(cfg.seed)
  for start in range(0, len(todo), cfg.prompt_batch):
    batch = todo[start:start + cfg.prompt_batch]
    batch_rows = sample_and_score(params, [r for _, r in batch], cfg, model=model,
                                  tokenizer=tokenizer, template=template, scorer=scorer,
                                  key=jax.random.fold_in(base, batch[0][0]))
    if on_rows is not None:
      on_rows(batch_rows)
    rows.extend(batch_rows)
    bar.update(len(batch))
  bar.close()
  return EvalResult(rows, aggregate(rows, cfg.ks, answers={prompt_id(r): r.answer
                                                            for r in records}))


def _group_metrics(rows: Sequence[dict], ks: Sequence[int],
                   has_answer: Callable[[str], bool]) -> dict[str, float]:
  by_prompt: dict[str, list[dict]] = collections.defaultdict(list)
  for row in rows:
    by_prompt[row["prompt_id"]].append(row)
  n = np.array([len(v) for v in by_prompt.values()])
  c = np.array([sum(x["correct"] for x in v) for v in by_prompt.values()])
  out = {"prompts": len(by_prompt), "samples": len(rows)}
  for k in ks:
    if k <= n.min():
      out[f"pass@{k}"] = float(np.mean(pass_at_k(n, c, k)))
  voted = [v for pid, v in by_prompt.items() if has_answer(pid)]
  if voted:
    wins = []
    for v in voted:
      index = majority_index([x["answer"] for x in v], equivalent=_vote_equivalence(v))
      wins.append(index is not None and v[index]["correct"])
    out[f"maj@{int(n.max())}"] = float(np.mean(wins))
  out["mean_length"] = float(np.mean([x["length"] for x in rows]))
  out["truncation_rate"] = float(np.mean([x["finish_reason"] == "length" for x in rows]))
  out["format_error_rate"] = float(np.mean([not x["format_ok"] for x in rows]))
  out["mean_reward"] = float(np.mean([x["reward"] for x in rows]))
  return out


def _same_text(a: str, b: str) -> bool:
  return verify.normalize_answer(a) == verify.normalize_answer(b)


def _vote_equivalence(rows: Sequence[dict]) -> Callable[[str, str], bool]:
  """Answers graded by math-verify vote by math equivalence, the others (exact) by their text."""
  return verify.math_equivalent if any("math" in x["details"] for x in rows) else _same_text


def aggregate(rows: Sequence[dict], ks: Sequence[int],
              answers: dict[str, str | None] | None = None) -> dict[str, Any]:
  """{"overall", "by_domain", "by_difficulty"} metrics of scored rows (module docstring).

  `answers` maps prompt ids to reference answers: maj@n is over prompts that have one (all
  prompts when it is None).
  """
  if not rows:
    return {"overall": {}, "by_domain": {}, "by_difficulty": {}}
  has_answer = (lambda pid: True) if answers is None else (lambda pid: answers.get(pid) is not None)
  metrics = functools.partial(_group_metrics, ks=ks, has_answer=has_answer)

  def grouped(key: str) -> dict[str, dict]:
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for row in rows:
      if row[key] is not None:
        groups[str(row[key])].append(row)
    return {name: metrics(group) for name, group in sorted(groups.items(),
                                                           key=lambda kv: _natural(kv[0]))}

  return {"overall": metrics(rows), "by_domain": grouped("domain"),
          "by_difficulty": grouped("difficulty")}


def _natural(text: str) -> tuple:
  return (0, int(text), "") if text.lstrip("-").isdigit() else (1, 0, text)


# ---- the SFT trainer's held-out evaluation ---------------------------------------------------

# How held-out answers are judged: each domain's verifier (format is reported on its own).
HELDOUT_REWARDS = rewards.RewardConfig(
    terms={"arith": "exact", "lists": "exact", "code": "code", "math": "math"},
    default_terms="exact", overlong_window=1, verifier_timeout_s=10.0, code_timeout_s=5.0,
    code_memory_mb=512, code_allow_weak_isolation=False, max_workers=2)


def heldout_records(data: DataConfig, per_difficulty: int) -> list[Record]:
  """The first `per_difficulty` toy held-out problems per domain and difficulty, as records."""
  if per_difficulty == 0:
    return []
  counts: collections.Counter = collections.Counter()
  chosen = []
  for record in toy_corpus.heldout_records(data.toy):
    key = (record.domain, record.meta["difficulty"])
    if counts[key] < per_difficulty:
      counts[key] += 1
      chosen.append(record)
  return chosen


def _rows(records: list[Record], tokenizer, template, seq_len: int) -> dict[str, np.ndarray]:
  """One example per row (held-out sets are small): [n, seq_len] int32 arrays."""
  out = {k: np.zeros((len(records), seq_len), np.int32) for k in packing.ROW_KEYS}
  for i, record in enumerate(records):
    ex = packing.tokenize_example(record, tokenizer, template)
    n = min(seq_len, len(ex["tokens"]))
    for key in ("tokens", "targets", "loss_mask"):
      out[key][i, :n] = ex[key][:n]
    out["segment_ids"][i, :n] = 1
    out["positions"][i, :n] = np.arange(n)
  return out


@functools.partial(jax.jit, static_argnames="cfg")
def _loss_sums(params, batch, cfg: SFTConfig):
  loss_sum, aux = sft_loss(params, batch, cfg)
  return loss_sum, aux["tokens"]


class Evaluator:
  """Held-out loss and greedy pass@1 for `params`; `evaluate` returns flat `eval/...` scalars."""

  def __init__(self, data: DataConfig, model: ModelConfig, *, eval_problems: int,
               max_new_tokens: int, mesh, batch_sharding, batch_size: int = 8):
    self.data, self.model = data, model
    self.batch_sharding, self.batch_size = batch_sharding, batch_size
    self.records = heldout_records(data, eval_problems)
    self.tokenizer = curate.make_tokenizer(data)
    self.cfg = EvalConfig(num_samples=1, max_new_tokens=max_new_tokens, temperature=0.0,
                          top_p=1.0, top_k=0, ks=(1,), prompt_batch=max(len(self.records), 1),
                          seed=0)
    self.rows = (_rows(self.records, self.tokenizer, data.template, data.seq_len)
                 if self.records else None)
    del mesh

  def heldout_loss(self, params) -> float:
    loss_sum = count = 0.0
    n = self.rows["tokens"].shape[0]
    shards = self.batch_sharding.mesh.size
    step = max(self.batch_size // shards, 1) * shards
    for start in range(0, n, step):
      batch = {k: _pad_rows(v[start:start + step], step) for k, v in self.rows.items()}
      batch = {k: jax.device_put(v, self.batch_sharding) for k, v in batch.items()}
      s, c = _loss_sums(params, batch, SFTConfig(self.model))
      loss_sum, count = loss_sum + float(s), count + float(c)
    return loss_sum / max(count, 1.0)

  def accuracy(self, params) -> dict[str, float]:
    with rewards.Scorer(HELDOUT_REWARDS) as scorer:
      result = evaluate(params, self.records, self.cfg, model=self.model,
                        tokenizer=self.tokenizer, template=self.data.template, scorer=scorer)
    correct: dict[str, list[bool]] = collections.defaultdict(list)
    for row in result.rows:
      correct[f"eval/accuracy/{row['domain']}/d{row['difficulty']}"].append(row["correct"])
    out = {k: float(np.mean(v)) for k, v in correct.items()}
    out["eval/accuracy"] = result.metrics["overall"]["pass@1"]  # greedy: pass@1 = accuracy
    # Closed think block and an extractable answer (truncation aside, unlike format_error_rate).
    out["eval/format_ok"] = float(np.mean([row["answer"] is not None for row in result.rows]))
    return out

  def evaluate(self, params, *, log: Callable[[str], None] = print) -> dict[str, float]:
    if self.rows is None:
      return {}
    out = {"eval/loss": self.heldout_loss(params)}
    out.update(self.accuracy(params))
    log(f"eval: held-out loss {out['eval/loss']:.4f}, greedy accuracy "
        f"{out['eval/accuracy']:.3f} and well-formed answers {out['eval/format_ok']:.3f} on "
        f"{len(self.records)} problems")
    return out


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)]) if (
      x.shape[0] < rows) else x
