"""Optimizers (AdamW, Muon) with warmup + cosine decay, gradient clipping and weight-decay masks.

`OptimConfig` is the typed boundary for `config.optim`. Parameters stay in their storage dtype
(float32 master weights); optimizer state is float32. Muon orthogonalizes the hidden matmul
weights (layer axis batched, heads folded into their matrix side, as `MUON_DIMS` says) and
leaves embeddings, the output head, norms, biases and λ/PolyNorm vectors to AdamW, as is usual.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from optax.contrib import MuonDimensionNumbers

from motif_jax import typed_config

OPTIMIZERS = ("adamw", "muon")

# Stacked weight layouts [L, in..., out...]: reduction (input) and output axes for Muon.
MUON_DIMS = {
    "wq": MuonDimensionNumbers(reduction_axis=1, output_axis=(2, 3)),
    "wk": MuonDimensionNumbers(reduction_axis=1, output_axis=(2, 3)),
    "wv": MuonDimensionNumbers(reduction_axis=1, output_axis=(2, 3)),
    "wo": MuonDimensionNumbers(reduction_axis=(1, 2), output_axis=3),
    "w_gate": MuonDimensionNumbers(reduction_axis=1, output_axis=2),
    "w_up": MuonDimensionNumbers(reduction_axis=1, output_axis=2),
    "w_down": MuonDimensionNumbers(reduction_axis=1, output_axis=2),
}
_DECAYED = set(MUON_DIMS) | {"embed", "unembed"}


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  name: str = "adamw"  # adamw | muon
  learning_rate: float = 3e-4  # peak
  warmup_steps: int = 0
  decay_steps: int = 1000  # cosine decay length after warmup (usually train.num_steps)
  final_lr_ratio: float = 0.1  # end of cosine as a fraction of the peak
  weight_decay: float = 0.0  # on matmul weights and embeddings only
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  grad_clip_norm: float = 1.0  # global norm; 0 = off
  muon_beta: float = 0.95
  muon_adam_lr_ratio: float = 1.0  # AdamW lr for non-Muon params, relative to learning_rate

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"optim.name={self.name!r} must be one of {OPTIMIZERS}")
    for field in ("learning_rate", "decay_steps", "eps"):
      if not getattr(self, field) > 0:
        raise ValueError(f"optim.{field}={getattr(self, field)!r} must be positive")
    for field in ("warmup_steps", "weight_decay", "grad_clip_norm"):
      if getattr(self, field) < 0:
        raise ValueError(f"optim.{field}={getattr(self, field)!r} must be >= 0")
    if not 0 <= self.final_lr_ratio <= 1:
      raise ValueError(f"optim.final_lr_ratio={self.final_lr_ratio} must be in [0, 1]")

  @classmethod
  def from_config_dict(cls, config: Mapping[str, Any]) -> "OptimConfig":
    return typed_config.build(cls, config, "optim")


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
  """Linear warmup to the peak, then cosine decay to final_lr_ratio * peak."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if cfg.warmup_steps else cfg.learning_rate, peak_value=cfg.learning_rate,
      warmup_steps=cfg.warmup_steps, decay_steps=cfg.warmup_steps + cfg.decay_steps,
      end_value=cfg.learning_rate * cfg.final_lr_ratio)


def _leaf_names(params) -> Any:
  return jax.tree_util.tree_map_with_path(lambda path, _: str(path[-1].key), params)


def weight_decay_mask(params) -> Any:
  return jax.tree.map(lambda name: name in _DECAYED, _leaf_names(params))


def muon_dimension_numbers(params) -> Any:
  return jax.tree.map(lambda name: MUON_DIMS.get(name), _leaf_names(params))


def make_optimizer(cfg: OptimConfig) -> tuple[optax.GradientTransformation, Callable]:
  """(optimizer, schedule): clip by global norm, then AdamW or Muon on the schedule."""
  schedule = make_schedule(cfg)
  if cfg.name == "adamw":
    core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay, mask=weight_decay_mask)
  else:
    adam_lr = (lambda step: cfg.muon_adam_lr_ratio * schedule(step))
    core = optax.contrib.muon(
        schedule, beta=cfg.muon_beta, eps=cfg.eps, weight_decay=cfg.weight_decay,
        weight_decay_mask=weight_decay_mask, adam_b1=cfg.b1, adam_b2=cfg.b2,
        adam_weight_decay=cfg.weight_decay, adam_learning_rate=adam_lr,
        muon_weight_dimension_numbers=muon_dimension_numbers)
  chain = [optax.clip_by_global_norm(cfg.grad_clip_norm)] if cfg.grad_clip_norm else []
  return optax.chain(*chain, core), schedule
