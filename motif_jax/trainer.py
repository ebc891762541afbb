"""The SFT trainer: `sft_step` and the Grain pipeline plugged into the shared loop shell.

One function, `train(config, workdir)`: typed configs from the ConfigDict, the Grain pipeline and
the jitted step (in/out shardings, donated state); `motif_jax.loop` does the rest (mesh, metrics
to `metrics.jsonl` and TensorBoard, progress bar, periodic held-out evaluation, Orbax checkpoints
of the train state and the data iterator under one step, final params). A workdir with
checkpoints resumes from the latest one, onto whatever mesh this run has; `train.init_from`
starts from another run's final params (the second SFT stage) with a fresh optimizer.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from jax.sharding import NamedSharding

from motif_jax import evaluation, loop, typed_config
from motif_jax import sharding as shd
from motif_jax.data import curate, pipeline
from motif_jax.data.config import DataConfig
from motif_jax.model import ModelConfig, validate_sharding
from motif_jax.optim import OptimConfig, make_optimizer
from motif_jax.sft import SFTConfig, sft_step
from motif_jax.train_state import TrainState, init_train_state

FINAL_PARAMS = loop.FINAL_PARAMS
CkptConfig = loop.CkptConfig
abstract_train_state = loop.abstract_train_state
abstract_params_with = loop.abstract_params_with


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  num_steps: int
  batch_size: int  # global rows per step (= data.global_batch_size)
  num_microbatches: int
  seed: int
  log_every: int
  eval_every: int  # steps; 0 = evaluate at the end only
  eval_problems: int  # held-out problems per domain and difficulty for greedy accuracy; 0 = off
  max_new_tokens: int
  max_bad_steps: int  # stop after this many consecutive non-finite steps
  loss_impl: str
  z_loss: float
  init_from: str  # "" = fresh init; else a run's workdir (its final/) or a params directory

  def __post_init__(self):
    for name in ("num_steps", "batch_size", "num_microbatches", "log_every", "max_bad_steps",
                 "max_new_tokens"):
      if getattr(self, name) < 1:
        raise ValueError(f"train.{name}={getattr(self, name)} must be >= 1")
    if self.batch_size % self.num_microbatches:
      raise ValueError(f"train.batch_size={self.batch_size} must be a multiple of "
                       f"train.num_microbatches={self.num_microbatches}")
    if self.eval_every < 0 or self.eval_problems < 0:
      raise ValueError("train.eval_every and train.eval_problems must be >= 0")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  model: ModelConfig
  optim: OptimConfig
  data: DataConfig
  train: TrainConfig
  ckpt: CkptConfig
  mesh: dict

  @classmethod
  def from_config_dict(cls, config) -> "RunConfig":
    run = cls(model=ModelConfig.from_config_dict(config.model),
              optim=OptimConfig.from_config_dict(config.optim),
              data=DataConfig.from_config_dict(config.data),
              train=typed_config.build(TrainConfig, config.train, "train"),
              ckpt=typed_config.build(CkptConfig, config.ckpt, "ckpt"),
              mesh=shd.parse_mesh(",".join(f"{k}={v}" for k, v in config.mesh.items())))
    curate.check_tokenizer_fits(run.data, run.model.vocab_size)
    if run.data.global_batch_size != run.train.batch_size:
      raise ValueError(f"data.global_batch_size={run.data.global_batch_size} must equal "
                       f"train.batch_size={run.train.batch_size}")
    return run

  def check_mesh(self, mesh) -> None:
    shape = dict(zip(mesh.axis_names, mesh.devices.shape))
    shards = shd.shard_count("batch", self.model.sharding, shape)
    if (self.train.batch_size // self.train.num_microbatches) % shards:
      raise ValueError(f"train.batch_size={self.train.batch_size} / train.num_microbatches="
                       f"{self.train.num_microbatches} must divide over the {shards} batch "
                       f"shards of mesh {shape}")
    validate_sharding(self.model, shape)


def _initial_params(run: RunConfig, mesh, log: Callable) -> Any:
  return loop.initial_params(run.train.init_from, "train.init_from", run.model, run.train.seed,
                             mesh, log, tokenizer=run.data.tokenizer)


def train(config, workdir: str, *, log: Callable[[str], None] = print) -> dict:
  """Run (or resume) SFT as `config` says; returns the final metrics and evaluation."""
  run = RunConfig.from_config_dict(config)
  workdir_path, mesh = loop.prepare(config, workdir, run.mesh, log)
  run.check_mesh(mesh)
  with jax.set_mesh(mesh):
    return _train(run, workdir_path, mesh, log)


def _train(run: RunConfig, workdir: Path, mesh, log: Callable) -> dict:
  optimizer, schedule = make_optimizer(run.optim)
  abstract_state, state_shardings = abstract_train_state(run.model, optimizer, run.train.seed,
                                                         mesh)
  batch_sharding = NamedSharding(mesh, shd.spec_for(("batch", None), run.model.sharding))
  ds, curation = pipeline.sft_dataset(run.data, process_index=jax.process_index(),
                                      process_count=jax.process_count())
  if curation is not None:
    log(f"data: {len(curation.kept)} of {len(curation.scored)} records kept by the filters")
  data_it = iter(ds)
  evaluator = evaluation.Evaluator(run.data, run.model, eval_problems=run.train.eval_problems,
                                   max_new_tokens=run.train.max_new_tokens, mesh=mesh,
                                   batch_sharding=batch_sharding)
  settings = loop.LoopSettings("sft", run.train.num_steps, run.train.log_every,
                               run.train.eval_every, run.train.max_bad_steps,
                               postfix=(("loss", "loss/ce"), ("lr", "train/lr")))
  shell = loop.Shell(workdir, settings, run.ckpt, evaluator, log=log)
  try:
    restored = shell.restore(abstract_state, data_it)
    if restored is not None:
      _, state, _ = restored
    else:
      params = _initial_params(run, mesh, log)
      state = jax.jit(functools.partial(init_train_state, optimizer=optimizer,
                                        seed=run.train.seed), out_shardings=state_shardings)(params)
    step_fn = jax.jit(
        functools.partial(sft_step, cfg=SFTConfig(run.model, run.train.num_microbatches,
                                                  run.train.loss_impl, run.train.z_loss),
                          optimizer=optimizer, schedule=schedule),
        in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
        donate_argnums=0)

    def advance(state: TrainState, step: int):
      del step
      return step_fn(state, pipeline.make_global_batch(next(data_it), batch_sharding))

    return shell.run(state, int(state.step), advance, data_iterator=data_it)
  finally:
    shell.close()
    data_it.close()
