"""Held-out evaluation during SFT: token loss on held-out traces and greedy-decoding accuracy.

The held-out set is the toy task's (`data.toy`: problems that share no prompt with the toy
training corpus), `train.eval_problems` per domain and difficulty: rendered in the target style
for the loss, answered by greedy decoding for accuracy. Set `train.eval_problems=0` for data that
is not the toy task (a held-out file for own data is future work).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable

import jax
import numpy as np

from motif_jax import generate
from motif_jax.data import curate, packing, toy_corpus, traces
from motif_jax.data.config import DataConfig
from motif_jax.data.records import Record
from motif_jax.model import ModelConfig
from motif_jax.sft import SFTConfig, sft_loss


def heldout_problems(data: DataConfig, per_difficulty: int) -> list[toy_corpus.Problem]:
  if per_difficulty == 0:
    return []
  counts: collections.Counter = collections.Counter()
  chosen = []
  for problem in toy_corpus.heldout(data.toy):
    key = (problem.domain, problem.difficulty)
    if counts[key] < per_difficulty:
      counts[key] += 1
      chosen.append(problem)
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
  """Held-out loss and accuracy for `params`; `evaluate` returns flat `eval/...` scalars."""

  def __init__(self, data: DataConfig, model: ModelConfig, *, eval_problems: int,
               max_new_tokens: int, mesh, batch_sharding, batch_size: int = 8):
    self.data, self.model, self.max_new_tokens = data, model, max_new_tokens
    self.batch_sharding, self.batch_size = batch_sharding, batch_size
    self.problems = heldout_problems(data, eval_problems)
    self.tokenizer = curate.make_tokenizer(data)
    records = [Record(prompt=p.prompt, response=toy_corpus.aligned_response(p), domain=p.domain,
                      source="heldout", answer=p.answer) for p in self.problems]
    self.rows = _rows(records, self.tokenizer, data.template, data.seq_len) if records else None
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
    template = self.data.template
    prompts = [self.tokenizer.encode(template.prompt(p.prompt)) for p in self.problems]
    stop = [i for i in (self.tokenizer.token_id(template.eos),) if i is not None]
    outputs = generate.generate(params, prompts, self.model, max_new_tokens=self.max_new_tokens,
                                stop_ids=stop)
    correct: dict[str, list[bool]] = collections.defaultdict(list)
    well_formed = []
    for problem, ids in zip(self.problems, outputs):
      text = template.think_open + self.tokenizer.decode(ids)
      trace = traces.split_trace(text, template, self.data.trace)
      well_formed.append(trace.think_closed and trace.answer is not None)
      ok = trace.answer is not None and trace.answer.strip() == problem.answer
      correct[f"{problem.domain}/d{problem.difficulty}"].append(ok)
      correct["all"].append(ok)
    out = {f"eval/accuracy/{k}" if k != "all" else "eval/accuracy": float(np.mean(v))
           for k, v in correct.items()}
    out["eval/format_ok"] = float(np.mean(well_formed))  # closed think block + boxed answer
    return out

  def evaluate(self, params, *, log: Callable[[str], None] = print) -> dict[str, float]:
    if self.rows is None:
      return {}
    out = {"eval/loss": self.heldout_loss(params)}
    out.update(self.accuracy(params))
    log(f"eval: held-out loss {out['eval/loss']:.4f}, greedy accuracy "
        f"{out['eval/accuracy']:.3f} and well-formed answers {out['eval/format_ok']:.3f} on "
        f"{len(self.problems)} problems")
    return out


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)]) if (
      x.shape[0] < rows) else x
