"""The loop shell shared by the SFT and RL trainers: everything impure around a step function.

A trainer builds its typed configs, its jitted step and its batches; the shell owns the rest:

    workdir, mesh = loop.prepare(config, workdir, mesh_sizes, log)   # config.json, mesh
    shell = loop.Shell(workdir, settings, ckpt_cfg, evaluator, log=log)
    restored = shell.restore(abstract_state, data_iterator)           # None on a fresh start
    summary = shell.run(state, start, step_fn, data_iterator=it, host_state=fn)
    shell.close()

`step_fn(state, step) -> (state, metrics)` advances one loop step (one SFT batch, one RL rollout
batch); metrics may still be on the devices: the shell fetches step n's only after step n+1 is
dispatched. Per step it enforces the bad-step guard (`train/bad_steps`), writes metrics every
`log_every` steps to metrics.jsonl and TensorBoard, advances the progress bar, checkpoints every
`ckpt.every` steps (the train state, the Grain iterator and/or the host state `host_state()`
returns, under one Orbax step), evaluates every `eval_every` steps; at the end it evaluates,
saves the final params under `workdir/final` and returns the summary.
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

from motif_jax import checkpoint, metrics_io
from motif_jax import sharding as shd
from motif_jax.model import ModelConfig, abstract_params, init_params, param_shardings
from motif_jax.train_state import TrainState, init_train_state

FINAL_PARAMS = checkpoint.FINAL_PARAMS


@dataclasses.dataclass(frozen=True)
class CkptConfig:
  every: int  # steps between checkpoints (the last step is always saved)
  keep: int  # checkpoints kept
  async_save: bool

  def __post_init__(self):
    if self.every < 1 or self.keep < 1:
      raise ValueError(f"ckpt.every={self.every} and ckpt.keep={self.keep} must be >= 1")


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """What the shell needs from a trainer's `train` section."""

  name: str  # progress-bar label
  num_steps: int  # loop steps (SFT batches, RL rollout batches)
  log_every: int
  eval_every: int  # 0 = evaluate at the end only
  max_bad_steps: int  # stop after this many consecutive non-finite steps
  postfix: tuple[tuple[str, str], ...] = ()  # (label, metric) shown on the progress bar


def prepare(config, workdir: str, mesh_sizes: dict, log: Callable[[str], None]
            ) -> tuple[Path, Any]:
  """Create the workdir, write the resolved config.json (process 0), build the mesh."""
  workdir_path = Path(workdir).absolute()
  workdir_path.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:  # every process of a multi-host run holds the same config
    (workdir_path / "config.json").write_text(json.dumps(config.to_dict(), indent=2,
                                                         default=str))
  mesh = shd.make_mesh(mesh_sizes)
  log(f"devices: {jax.device_count()} ({jax.devices()[0].platform}), mesh {mesh_sizes}, "
      f"process {jax.process_index()}/{jax.process_count()}")
  return workdir_path, mesh


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


def abstract_params_with(model: ModelConfig, mesh) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_params(model), param_shardings(model, mesh))


def initial_params(init_from: str, field: str, model: ModelConfig, seed: int, mesh,
                   log: Callable[[str], None], tokenizer: str | None = None) -> Any:
  """Fresh params (`init_from` empty) or a run's final params / a params directory, checked to
  have `model`'s architecture (and, given this run's data.`tokenizer`, to have been trained with
  it); errors name the config `field` (e.g. train.init_from)."""
  if not init_from:
    return init_params(jax.random.key(seed), model, mesh)
  source = Path(init_from)
  if (source / FINAL_PARAMS / checkpoint.CONFIG_FILE).exists():
    source = source / FINAL_PARAMS
  if not (source / checkpoint.CONFIG_FILE).exists():
    raise ValueError(f"{field}={init_from}: no params there (expected a run's workdir with "
                     f"{FINAL_PARAMS}/, or a directory with {checkpoint.PARAMS_DIR}/ and "
                     f"{checkpoint.CONFIG_FILE})")
  if tokenizer is not None:
    checkpoint.check_trained_tokenizer(source, tokenizer, "data.tokenizer")
  saved_cfg, params = checkpoint.restore_params(source, mesh=mesh)
  saved_arch, run_arch = saved_cfg.architecture(), model.architecture()
  if saved_arch != run_arch:
    diff = [f.name for f in dataclasses.fields(ModelConfig)
            if getattr(saved_arch, f.name) != getattr(run_arch, f.name)]
    raise ValueError(f"{field}={init_from}: its model differs in {['model.' + d for d in diff]}")
  log(f"initialized params from {source}")
  return jax.tree.map(lambda p, s: jax.device_put(p.astype(s.dtype), s.sharding), params,
                      abstract_params_with(model, mesh))


class Shell:
  """Checkpoints, metrics, progress, bad-step guard and evaluation around a step function."""

  def __init__(self, workdir: Path, settings: LoopSettings, ckpt: CkptConfig, evaluator, *,
               log: Callable[[str], None] = print):
    self.workdir, self.settings, self.ckpt_cfg = workdir, settings, ckpt
    self.evaluator, self.log = evaluator, log
    self.ckpt = checkpoint.TrainCheckpointer(workdir / "checkpoints", keep=ckpt.keep,
                                             async_save=ckpt.async_save)
    self.writer = metrics_io.MetricsWriter(workdir, enabled=jax.process_index() == 0)

  def restore(self, abstract_state: Any, data_iterator: Any = None, *, host: bool = False
              ) -> tuple[int, TrainState, dict | None] | None:
    """(step, state, host state or None) from the latest checkpoint; None when there is none."""
    latest = self.ckpt.latest_step()
    if latest is None:
      return None
    state = self.ckpt.restore(latest, abstract_state, data_iterator)
    host_state = self.ckpt.restore_host(latest) if host else None
    self.log(f"resumed from step {latest} in {self.ckpt.directory}")
    return latest, state, host_state

  def close(self) -> None:
    self.ckpt.close()
    self.writer.close()

  def run(self, state: TrainState, start: int,
          step_fn: Callable[[TrainState, int], tuple[TrainState, dict]], *,
          data_iterator: Any = None, host_state: Callable[[], dict] | None = None) -> dict:
    """Steps start+1 .. num_steps, then the final evaluation and params; returns the summary
    {"start_step", "step", "train", "eval", "seconds", "tokens_per_s", "params"}."""
    s = self.settings
    progress = tqdm(total=s.num_steps, initial=start, desc=s.name, unit="step",
                    disable=jax.process_index() != 0, mininterval=2.0)
    pending, last, tokens_seen, t0 = None, {}, 0.0, time.perf_counter()

    def report(step: int, metrics: dict) -> dict:
      nonlocal tokens_seen
      host = {k: float(v) for k, v in jax.device_get(metrics).items()}
      tokens_seen += host["train/tokens"]
      if host["train/bad_steps"] >= s.max_bad_steps:
        raise RuntimeError(f"{int(host['train/bad_steps'])} consecutive steps had non-finite loss "
                           f"or gradients (train.max_bad_steps={s.max_bad_steps}); stopping at "
                           f"step {step}. The latest checkpoint holds the last good state.")
      if step % s.log_every == 0 or step == s.num_steps:
        host["perf/tokens_per_s"] = tokens_seen / max(time.perf_counter() - t0, 1e-9)
        self.writer.write(step, host)
        progress.set_postfix({label: f"{host[key]:.3g}" for label, key in s.postfix})
      progress.update(1)
      return host

    step = start
    for step in range(start + 1, s.num_steps + 1):
      state, metrics = step_fn(state, step)
      if pending is not None:  # fetch step n-1's metrics only after step n is dispatched
        last = report(*pending)
      pending = (step, metrics)
      if step % self.ckpt_cfg.every == 0 or step == s.num_steps:
        last = report(*pending)
        pending = None
        self.ckpt.save(step, state, data_iterator,
                       host=None if host_state is None else host_state())
      if s.eval_every and step % s.eval_every == 0 and step != s.num_steps:
        self.writer.write(step, self.evaluator.evaluate(state.params, log=self.log))
    if pending is not None:
      last = report(*pending)
    progress.close()
    final = self.evaluator.evaluate(state.params, log=self.log)
    self.writer.write(step, final)
    self.ckpt.wait()
    checkpoint.replace_params(self.workdir / FINAL_PARAMS, self.evaluator.model, state.params)
    elapsed = time.perf_counter() - t0
    return {"start_step": start, "step": step, "train": last, "eval": final, "seconds": elapsed,
            "tokens_per_s": tokens_seen / max(elapsed, 1e-9), "params": state.params}
