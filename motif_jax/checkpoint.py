"""Orbax checkpoints. For now params only: `<dir>/params` plus `<dir>/model_config.json`.

Orbax writes into a temporary directory and renames it when complete, so a crash never leaves a
half-written `params`; `model_config.json` is written to a temporary file and renamed likewise.
Restores go straight into the target sharding (no host copy of the full tree).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, SingleDeviceSharding

from motif_jax.model.config import ModelConfig
from motif_jax.model.params import abstract_params, param_shardings

PARAMS_DIR = "params"
CONFIG_FILE = "model_config.json"


def config_to_json(cfg: ModelConfig) -> str:
  return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True) + "\n"


def config_from_json(text: str) -> ModelConfig:
  return ModelConfig.from_config_dict(json.loads(text))


def save_params(directory: str | Path, cfg: ModelConfig, params: Any) -> Path:
  """Write `params` (Orbax) and `cfg` under `directory`; refuses to overwrite existing params."""
  directory = Path(directory).absolute()
  if (directory / PARAMS_DIR).exists():
    raise FileExistsError(f"{directory / PARAMS_DIR} already exists; choose a fresh directory")
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
  tmp = directory / (CONFIG_FILE + ".tmp")
  tmp.write_text(config_to_json(cfg))
  os.replace(tmp, directory / CONFIG_FILE)
  return directory


def restore_params(directory: str | Path, *, mesh: Mesh | None = None) -> tuple[ModelConfig, Any]:
  """`(cfg, params)` from `save_params`, placed as `param_shardings(cfg, mesh)` (one device if
  `mesh` is None)."""
  directory = Path(directory).absolute()
  cfg = config_from_json((directory / CONFIG_FILE).read_text())
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
