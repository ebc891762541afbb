"""The SFT training loop: the impure shell around `sft_step`.

One function, `train(config, workdir)`: typed configs from the ConfigDict, a mesh, the Grain
pipeline, the jitted step (in/out shardings, donated state), metrics to `metrics.jsonl` and
TensorBoard, a progress bar, periodic held-out evaluation, and Orbax checkpoints of the train
state and the data iterator under one step. A workdir with checkpoints resumes from the latest
one, onto whatever mesh this run has; `train.init_from` starts from another run's final params
(the second SFT stage) with a fresh optimizer.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from motif_jax import checkpoint, evaluation, metrics_io, typed_config
from motif_jax import sharding as shd
from motif_jax.data import pipeline
from motif_jax.data.config import DataConfig
from motif_jax.model import (ModelConfig, abstract_params, init_params, param_shardings,
                             validate_sharding)
from motif_jax.optim import OptimConfig, make_optimizer
from motif_jax.sft import SFTConfig, sft_step
from motif_jax.train_state import TrainState, init_train_state

FINAL_PARAMS = "final"


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
class CkptConfig:
  every: int  # steps between checkpoints (the last step is always saved)
  keep: int  # checkpoints kept
  async_save: bool

  def __post_init__(self):
    if self.every < 1 or self.keep < 1:
      raise ValueError(f"ckpt.every={self.every} and ckpt.keep={self.keep} must be >= 1")


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


def abstract_train_state(model: ModelConfig, optimizer, seed: int, mesh) -> tuple[Any, Any]:
  """(abstract TrainState with shardings, sharding tree): from shapes, nothing allocated."""
  p_shardings = param_shardings(model, mesh)
  abstract_p = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract_params(model), p_shardings)
  make = functools.partial(init_train_state, optimizer=optimizer, seed=seed)
  shapes = jax.eval_shape(make, abstract_p)
  # Optimizer moments take their parameter's sharding. Left to the compiler (the output
  # shardings of a jitted init) they came out replicated: zeros do not depend on the inputs.
  replicated = NamedSharding(mesh, PartitionSpec())
  # A moment leaf's key path ends with its parameter's path (mu['layers']['attn']['wq']), in
  # AdamW and in Muon's masked sub-states alike.
  by_path = {jax.tree_util.keystr(path): a
             for path, a in jax.tree_util.tree_flatten_with_path(abstract_p)[0]}

  def moment_sharding(path, a):
    text = jax.tree_util.keystr(path)
    for p_path, p in by_path.items():
      if text.endswith(p_path) and a.shape == p.shape:
        return p.sharding
    return replicated

  opt_shardings = jax.tree_util.tree_map_with_path(moment_sharding, shapes.opt_state)
  shardings = jax.tree.map(lambda _: replicated, shapes)
  shardings = dataclasses.replace(shardings, params=p_shardings, opt_state=opt_shardings)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          shapes, shardings)
  return abstract, shardings


def _initial_params(run: RunConfig, mesh, log: Callable) -> Any:
  if not run.train.init_from:
    return init_params(jax.random.key(run.train.seed), run.model, mesh)
  source = Path(run.train.init_from)
  if (source / FINAL_PARAMS / checkpoint.CONFIG_FILE).exists():
    source = source / FINAL_PARAMS
  if not (source / checkpoint.CONFIG_FILE).exists():
    raise ValueError(f"train.init_from={run.train.init_from}: no params there (expected a run's "
                     f"workdir with {FINAL_PARAMS}/, or a directory with "
                     f"{checkpoint.PARAMS_DIR}/ and {checkpoint.CONFIG_FILE})")
  saved_cfg, params = checkpoint.restore_params(source, mesh=mesh)
  saved_arch, run_arch = saved_cfg.architecture(), run.model.architecture()
  if saved_arch != run_arch:
    diff = [f.name for f in dataclasses.fields(ModelConfig)
            if getattr(saved_arch, f.name) != getattr(run_arch, f.name)]
    raise ValueError(f"train.init_from={run.train.init_from}: its model differs in "
                     f"{['model.' + d for d in diff]}")
  log(f"initialized params from {source}")
  return jax.tree.map(lambda p, s: jax.device_put(p.astype(s.dtype), s.sharding), params,
                      abstract_params_with(run.model, mesh))


def abstract_params_with(model: ModelConfig, mesh) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_params(model), param_shardings(model, mesh))


def train(config, workdir: str, *, log: Callable[[str], None] = print) -> dict:
  """Run (or resume) SFT as `config` says; returns the final metrics and evaluation."""
  run = RunConfig.from_config_dict(config)
  workdir_path = Path(workdir).absolute()
  workdir_path.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:  # every process of a multi-host run holds the same config
    (workdir_path / "config.json").write_text(json.dumps(config.to_dict(), indent=2,
                                                         default=str))
  mesh = shd.make_mesh(run.mesh)
  run.check_mesh(mesh)
  log(f"devices: {jax.device_count()} ({jax.devices()[0].platform}), mesh {run.mesh}, "
      f"process {jax.process_index()}/{jax.process_count()}")
  with jax.set_mesh(mesh):
    return _train(run, workdir_path, mesh, log)


def _train(run: RunConfig, workdir: Path, mesh, log: Callable) -> dict:
  optimizer, schedule = make_optimizer(run.optim)
  abstract_state, state_shardings = abstract_train_state(run.model, optimizer, run.train.seed,
                                                         mesh)
  batch_sharding = NamedSharding(mesh, shd.spec_for(("batch", None), run.model.sharding))
  ckpt = checkpoint.TrainCheckpointer(workdir / "checkpoints", keep=run.ckpt.keep,
                                      async_save=run.ckpt.async_save)
  ds, curation = pipeline.sft_dataset(run.data, process_index=jax.process_index(),
                                      process_count=jax.process_count())
  if curation is not None:
    log(f"data: {len(curation.kept)} of {len(curation.scored)} records kept by the filters")
  data_it = iter(ds)
  latest = ckpt.latest_step()
  if latest is not None:
    state = ckpt.restore(latest, abstract_state, data_it)
    log(f"resumed from step {latest} in {ckpt.directory}")
  else:
    params = _initial_params(run, mesh, log)
    state = jax.jit(functools.partial(init_train_state, optimizer=optimizer, seed=run.train.seed),
                    out_shardings=state_shardings)(params)
  step_fn = jax.jit(
      functools.partial(sft_step, cfg=SFTConfig(run.model, run.train.num_microbatches,
                                                run.train.loss_impl, run.train.z_loss),
                        optimizer=optimizer, schedule=schedule),
      in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
      donate_argnums=0)
  evaluator = evaluation.Evaluator(run.data, run.model, eval_problems=run.train.eval_problems,
                                   max_new_tokens=run.train.max_new_tokens, mesh=mesh,
                                   batch_sharding=batch_sharding)
  writer = metrics_io.MetricsWriter(workdir, enabled=jax.process_index() == 0)
  start = int(state.step)
  summary: dict[str, Any] = {"start_step": start}
  try:
    summary.update(_loop(run, state, step_fn, data_it, batch_sharding, ckpt, evaluator, writer,
                         start, log))
  finally:
    ckpt.close()
    writer.close()
    data_it.close()
  return summary


def _loop(run, state: TrainState, step_fn, data_it, batch_sharding, ckpt, evaluator, writer,
          start: int, log) -> dict:
  progress = tqdm(total=run.train.num_steps, initial=start, desc="sft", unit="step",
                  disable=jax.process_index() != 0, mininterval=2.0)
  pending, last, tokens_seen, t0 = None, {}, 0, time.perf_counter()

  def report(step: int, metrics: dict) -> dict:
    nonlocal tokens_seen
    host = {k: float(v) for k, v in jax.device_get(metrics).items()}
    tokens_seen += host["train/tokens"]
    if host["train/bad_steps"] >= run.train.max_bad_steps:
      raise RuntimeError(f"{int(host['train/bad_steps'])} consecutive steps had non-finite loss or "
                         f"gradients (train.max_bad_steps={run.train.max_bad_steps}); stopping at "
                         f"step {step}. The latest checkpoint holds the last good state.")
    if step % run.train.log_every == 0 or step == run.train.num_steps:
      host["perf/tokens_per_s"] = tokens_seen / max(time.perf_counter() - t0, 1e-9)
      writer.write(step, host)
      progress.set_postfix(loss=f"{host['loss/ce']:.3f}", lr=f"{host['train/lr']:.2e}")
    progress.update(1)
    return host

  for step in range(start + 1, run.train.num_steps + 1):
    batch = pipeline.make_global_batch(next(data_it), batch_sharding)
    state, metrics = step_fn(state, batch)
    if pending is not None:  # fetch step n-1's metrics only after step n is dispatched
      last = report(*pending)
    pending = (step, metrics)
    if step % run.ckpt.every == 0 or step == run.train.num_steps:
      last = report(*pending)
      pending = None
      ckpt.save(step, state, data_it)
    if run.train.eval_every and step % run.train.eval_every == 0 and step != run.train.num_steps:
      writer.write(step, evaluator.evaluate(state.params, log=log))
  if pending is not None:
    last = report(*pending)
  progress.close()
  final = evaluator.evaluate(state.params, log=log)
  writer.write(int(state.step), final)
  ckpt.wait()
  checkpoint.replace_params(ckpt.directory.parent / FINAL_PARAMS, evaluator.model, state.params)
  elapsed = time.perf_counter() - t0
  return {"step": int(state.step), "train": last, "eval": final, "seconds": elapsed,
          "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
          "params": state.params}
