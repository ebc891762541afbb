"""Orbax checkpoints: params (`<dir>/params` plus `<dir>/model_config.json`) and training
checkpoints (train state + each process's data iterator state under one step).

Every process calls the save functions in a multi-host run: Orbax writes each process's shards
and process 0 the metadata and files the processes would write alike. Orbax writes into a temporary directory and renames it when complete, so a crash never leaves a
half-written `params`; `model_config.json` is written to a temporary file and renamed likewise.
Restores go straight into the target sharding (no host copy of the full tree).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, SingleDeviceSharding

from motif_jax.data.tokenizer import Tokenizer, check_fits
from motif_jax.model.config import RUNTIME_FIELDS, ModelConfig
from motif_jax.model.params import abstract_params, param_shardings

PARAMS_DIR = "params"
CONFIG_FILE = "model_config.json"
FINAL_PARAMS = "final"  # a run's final params: <workdir>/final, beside its config.json


def config_to_json(cfg: ModelConfig) -> str:
  return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True) + "\n"


def config_from_json(text: str) -> ModelConfig:
  """Configs saved before a runtime field existed (model.config.RUNTIME_FIELDS) get its default."""
  values = json.loads(text)
  for field in dataclasses.fields(ModelConfig):
    if field.name in RUNTIME_FIELDS and field.name not in values:
      values[field.name] = field.default
  return ModelConfig.from_config_dict(values)


BUILTIN_TOKENIZERS = ("", "toy")  # data.tokenizer values that name no file: bytes, toy words


def check_trained_tokenizer(params: str | Path, tokenizer: str, field: str) -> None:
  """A run's final params (`<workdir>/final`, beside the run's config.json) were trained with
  that run's data.tokenizer; where it or `tokenizer` is a built-in one (bytes, toy words) and they
  differ, an error naming `field` (both fit the vocab, so nothing else would notice that every id
  means another word). Params without a run config beside them are not checked."""
  params = Path(params).absolute()
  run_config = params.parent / "config.json"
  if params.name != FINAL_PARAMS or not run_config.is_file():
    return
  trained = json.loads(run_config.read_text()).get("data", {}).get("tokenizer")
  if not isinstance(trained, str) or trained == tokenizer:
    return
  if trained in BUILTIN_TOKENIZERS or tokenizer in BUILTIN_TOKENIZERS:
    raise ValueError(f"{field}={tokenizer or 'bytes'!r}, but {params} was trained with "
                     f"data.tokenizer={trained or 'bytes'!r} ({run_config}): use that tokenizer")


def read_config(directory: str | Path) -> ModelConfig:
  """The ModelConfig `save_params` wrote beside the params in `directory`."""
  return config_from_json((Path(directory) / CONFIG_FILE).read_text())


def check_tokenizer(directory: str | Path, tokenizer: Tokenizer, spec: str, field: str) -> None:
  """Before the params in `directory` are read: a run's final params were trained with
  `spec` (the `field` value that made `tokenizer`; `check_trained_tokenizer`), and `tokenizer`
  has no id past the saved model's vocabulary (an out-of-range id would be clamped silently)."""
  check_trained_tokenizer(directory, spec, field)
  check_fits(tokenizer, read_config(directory).vocab_size, f"{field}={spec or 'bytes'!r}",
             "the checkpoint's model vocab_size")


def save_params(directory: str | Path, cfg: ModelConfig, params: Any) -> Path:
  """Write `params` (Orbax) and `cfg` under `directory`; refuses to overwrite existing params."""
  directory = Path(directory).absolute()
  if (directory / PARAMS_DIR).exists():
    raise FileExistsError(f"{directory / PARAMS_DIR} already exists; choose a fresh directory")
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(config_to_json(cfg))
    os.replace(tmp, directory / CONFIG_FILE)
  _barrier(f"save_params:{directory}")
  return directory


def replace_params(directory: str | Path, cfg: ModelConfig, params: Any) -> Path:
  """`save_params` into a fresh sibling directory, then swap it in place of `directory`."""
  directory = Path(directory).absolute()
  staging = directory.with_name(directory.name + ".staging")
  primary = jax.process_index() == 0
  if primary:
    shutil.rmtree(staging, ignore_errors=True)
  _barrier(f"replace_params:clear:{directory}")
  save_params(staging, cfg, params)
  if primary:
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
      os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)
  _barrier(f"replace_params:done:{directory}")
  return directory


def _barrier(name: str) -> None:
  # File moves by process 0 must be seen by all processes before any goes on.
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def restore_params(directory: str | Path, *, mesh: Mesh | None = None) -> tuple[ModelConfig, Any]:
  """`(cfg, params)` from `save_params`, placed as `param_shardings(cfg, mesh)` (one device if
  `mesh` is None)."""
  directory = Path(directory).absolute()
  cfg = read_config(directory)
  abstract = abstract_params(cfg)
  if mesh is None:
    shardings = jax.tree.map(lambda _: SingleDeviceSharding(jax.devices()[0]), abstract)
  else:
    shardings = param_shardings(cfg, mesh)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(directory / PARAMS_DIR, target)
  return cfg, params


# ---- Training checkpoints: state + data iterator state under one step ------------------------

STATE_ITEM = "state"
DATA_ITEM = "data"
HOST_ITEM = "host"  # JSON host-side loop state (RL: queue, replay buffer, statistics)


def arrays_to_json(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
  """numpy arrays as JSON values, bit-exact: dtype, shape and the raw bytes in base64."""
  return {k: {"dtype": np.asarray(v).dtype.str, "shape": list(np.shape(v)),
              "data": base64.b64encode(np.ascontiguousarray(v).tobytes()).decode("ascii")}
          for k, v in arrays.items()}


def arrays_from_json(encoded: dict[str, dict]) -> dict[str, np.ndarray]:
  return {k: np.frombuffer(base64.b64decode(v["data"]), np.dtype(v["dtype"])).reshape(v["shape"])
          .copy() for k, v in encoded.items()}


class TrainCheckpointer:
  """Orbax CheckpointManager for a workdir: TrainState (async), the data iterator state and/or a
  JSON item of host-side loop state saved under one step, keep-N, resume from the latest
  complete step.

  The iterator state goes through Grain's own Orbax handler: one JSON file per process
  (`data/process_<i>-of-<n>.json`), since each process reads its own slice of the data. A run
  resumes with the process count it was saved with.

  Orbax writes each step into a temporary directory and renames it only when every item is
  written, so a crash or kill during a save leaves the previous step as the latest loadable one.
  """

  def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
    if keep < 1:
      raise ValueError(f"ckpt.keep={keep} must be >= 1")
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                       DATA_ITEM: grain.checkpoint.CheckpointHandler(),
                       HOST_ITEM: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: Any = None, *,
           host: dict | None = None) -> None:
    """Start saving (returns once arrays are copied off the devices when async); the iterator's
    state and `host` (a JSON-able dict) are taken now."""
    items = {STATE_ITEM: ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
    if host is not None:
      items[HOST_ITEM] = ocp.args.JsonSave(host)
    self._manager.save(step, args=ocp.args.Composite(**items))

  def restore(self, step: int, abstract_state: Any, data_iterator: Any = None) -> Any:
    """The state, with `data_iterator` moved to the saved position; `abstract_state` holds
    ShapeDtypeStructs with the target shardings, so a checkpoint saved on one mesh restores onto
    another."""
    items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items))[STATE_ITEM]

  def restore_host(self, step: int) -> dict:
    """The host item saved with `save(..., host=...)` at `step`."""
    return self._manager.restore(step, args=ocp.args.Composite(
        **{HOST_ITEM: ocp.args.JsonRestore()}))[HOST_ITEM]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
