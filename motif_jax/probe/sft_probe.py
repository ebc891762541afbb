"""The probe SFT (measure d): fine-tune the student on a candidate's budgeted rows, then evaluate.

One `Prober` serves every candidate of a run: the jitted `sft_step` (one compilation: same model,
row shape and optimizer for all candidates), the evaluation records and the reward scorer. Each
candidate starts from the student's params with a fresh optimizer state.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from tqdm import tqdm

from motif_jax import evaluation, loop
from motif_jax import sharding as shd
from motif_jax.data import pipeline
from motif_jax.data.records import Record
from motif_jax.data.template import ChatTemplate
from motif_jax.model import ModelConfig
from motif_jax.optim import OptimConfig, make_optimizer
from motif_jax.probe import rank
from motif_jax.rl import rewards
from motif_jax.sft import SFTConfig, sft_step
from motif_jax.train_state import init_train_state


@dataclasses.dataclass(frozen=True)
class ProbeSFTConfig:
  token_budget: int  # completion tokens per epoch per candidate; 0 = the smallest candidate's
  epochs: int
  seq_len: int  # tokens per packed row
  batch_size: int  # rows per step
  seed: int
  loss_impl: str
  eval_student: bool  # evaluate the student too (baseline)
  rank_by: str  # the probe score ranked first: pass@1 | mean_reward | format_ok (rank.RANK_BY)

  def __post_init__(self):
    if self.rank_by not in rank.RANK_BY:
      raise ValueError(f"probe.rank_by={self.rank_by!r} must be one of {rank.RANK_BY}")
    if self.token_budget < 0:
      raise ValueError(f"probe.token_budget={self.token_budget} must be >= 0")
    for name in ("epochs", "seq_len", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"probe.{name}={getattr(self, name)} must be >= 1")


class Prober:
  """Probe SFT + evaluation of candidates from one student (see the module docstring)."""

  def __init__(self, student_params: Any, model: ModelConfig, cfg: ProbeSFTConfig,
               optim: OptimConfig, mesh, *, eval_records: Sequence[Record],
               eval_cfg: evaluation.EvalConfig, tokenizer, template: ChatTemplate,
               scorer: rewards.Scorer):
    self.student, self.model, self.cfg = student_params, model, cfg
    self.eval_records, self.eval_cfg = list(eval_records), eval_cfg
    self.tokenizer, self.template, self.scorer = tokenizer, template, scorer
    optimizer, schedule = make_optimizer(optim)
    _, self.state_shardings = loop.abstract_train_state(model, optimizer, cfg.seed, mesh)
    self.batch_sharding = NamedSharding(mesh, shd.spec_for(("batch", None), model.sharding))
    self.init = jax.jit(functools.partial(init_train_state, optimizer=optimizer, seed=cfg.seed),
                        out_shardings=self.state_shardings)
    self.step = jax.jit(
        functools.partial(sft_step, cfg=SFTConfig(model, 1, cfg.loss_impl), optimizer=optimizer,
                          schedule=schedule),
        in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, None), donate_argnums=0)

  def train(self, batches: Sequence[dict[str, np.ndarray]], *, name: str
            ) -> tuple[Any, dict[str, float]]:
    """`cfg.epochs` passes over `batches` (reshuffled each pass) from the student's params:
    (params, {"steps", "trained_tokens", "first_loss", "last_loss"})."""
    # A copy: the step donates its state, and the student serves every candidate.
    state = self.init(jax.tree.map(lambda p: p.copy(), self.student))
    rng = np.random.default_rng(self.cfg.seed)
    order = [i for _ in range(self.cfg.epochs) for i in rng.permutation(len(batches))]
    trained, losses = 0.0, []
    for i in tqdm(order, desc=f"probe sft {name}", unit="step", leave=False,
                  disable=jax.process_index() != 0, mininterval=2.0):
      state, metrics = self.step(state, pipeline.make_global_batch(batches[i],
                                                                   self.batch_sharding))
      metrics = jax.device_get(metrics)
      trained += float(metrics["train/tokens"])
      losses.append(float(metrics["loss/ce"]))
    return state.params, {"steps": len(order), "trained_tokens": int(trained),
                          "first_loss": losses[0], "last_loss": losses[-1]}

  def evaluate(self, params) -> evaluation.EvalResult:
    return evaluation.evaluate(params, self.eval_records, self.eval_cfg, model=self.model,
                               tokenizer=self.tokenizer, template=self.template,
                               scorer=self.scorer)


def probe_metrics(result: evaluation.EvalResult, ks: Sequence[int]) -> dict[str, Any]:
  """Flat `probe_*` measures of an evaluation: overall pass@k, mean reward, format errors (and
  their complement `format_ok`), truncation, mean length, and pass@k by difficulty."""
  overall = result.metrics["overall"]
  out: dict[str, Any] = {f"probe_pass@{k}": overall.get(f"pass@{k}", 0.0) for k in ks}
  for name in ("mean_reward", "format_error_rate", "truncation_rate", "mean_length"):
    out[f"probe_{name}"] = overall.get(name, 0.0)
  out["probe_format_ok"] = 1.0 - out["probe_format_error_rate"]
  out["probe_by_difficulty"] = {
      level: {f"pass@{k}": m.get(f"pass@{k}", 0.0) for k in ks}
      for level, m in result.metrics["by_difficulty"].items()}
  return out


