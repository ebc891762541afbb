"""Parameter counts, per-device parameter bytes and forward FLOPs, from shapes alone."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from motif_jax import sharding as shd
from motif_jax.model.config import ModelConfig
from motif_jax.model.params import ParamSpec, param_specs

_MATMULS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


def _leaves(cfg: ModelConfig) -> list[tuple[str, ParamSpec]]:
  flat, _ = jax.tree_util.tree_flatten_with_path(param_specs(cfg),
                                                 is_leaf=lambda x: isinstance(x, ParamSpec))
  return [("/".join(str(k.key) for k in path), spec) for path, spec in flat]


def _component(path: str) -> str:
  parts = path.split("/")
  if parts[0] != "layers":
    return parts[0]
  return parts[1] if parts[1] in ("attn", "mlp") else "layer_norms"


def param_breakdown(cfg: ModelConfig) -> dict[str, int]:
  """Exact parameter count per component (embed, attn, mlp, layer_norms, final_norm, unembed)."""
  counts: dict[str, int] = {}
  for path, spec in _leaves(cfg):
    key = _component(path)
    counts[key] = counts.get(key, 0) + int(np.prod(spec.shape, dtype=np.int64))
  return counts


def param_bytes_per_device(cfg: ModelConfig, mesh_shape: Mapping[str, int]) -> int:
  """Bytes of parameters held by one device when sharded by `cfg.sharding` on `mesh_shape`."""
  total = 0
  for _, spec in _leaves(cfg):
    local = [-(-size // shd.shard_count(axis, cfg.sharding, mesh_shape))
             for size, axis in zip(spec.shape, spec.axes)]
    itemsize = jnp.dtype(spec.dtype or cfg.param_dtype).itemsize
    total += int(np.prod(local, dtype=np.int64)) * itemsize
  return total


def matmul_shapes(cfg: ModelConfig) -> list[tuple[int, int]]:
  """Every weight matmul of one forward as a 2-D [in, out] (each layer's separately, then the
  output head): the sizes whose dots a training step runs forward, as dX and as dW."""
  shapes = []
  for path, spec in _leaves(cfg):
    name = path.rsplit("/", 1)[-1]
    if name not in _MATMULS:
      continue
    layer_shape = spec.shape[1:] if path.startswith("layers/") else spec.shape
    contract = 2 if name == "wo" else 1  # wo is [heads, head_dim, d]
    size_in = int(np.prod(layer_shape[:contract]))
    repeats = spec.shape[0] if path.startswith("layers/") else 1
    shapes += [(size_in, int(np.prod(layer_shape[contract:])))] * repeats
  return shapes + [(cfg.d_model, cfg.vocab_size)]


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
  """Forward FLOPs per token: 2 per weight of every matmul (incl. the output head) plus
  attention scores and value mixing over an average causal context of seq_len/2
  (the MaxText convention, which halves causal attention)."""
  matmul = 0
  for path, spec in _leaves(cfg):
    if path.rsplit("/", 1)[-1] in _MATMULS:
      matmul += 2 * int(np.prod(spec.shape, dtype=np.int64))
  matmul += 2 * cfg.d_model * cfg.vocab_size  # output head (tied or not)
  context = seq_len / 2
  per_layer = 2 * cfg.num_heads * (cfg.head_dim + cfg.value_dim) * context
  attention = int(per_layer * cfg.num_layers)
  return {"matmul": matmul, "attention": attention, "total": matmul + attention}
