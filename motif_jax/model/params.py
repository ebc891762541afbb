"""Parameters declared once: shape, logical axes and initializer, for every leaf.

From `param_specs(cfg)` come the abstract tree (`abstract_params`, via `jax.eval_shape`), the
sharding tree (`param_shardings`) and the real arrays (`init_params`, jitted with
`out_shardings`, so no large array is ever created unsharded).

Tree layout (L = num_layers; block leaves are stacked on a leading `layers` axis):

  embed [v, d]                       final_norm [d]            unembed [d, v] (untied only)
  layers/attn_norm [L, d]            layers/mlp_norm [L, d]
  layers/attn/wq [L, d, n, h]        wk, wv [L, d, k, h]       wo [L, n_out, h_v, d]
             bq [L, n, h], bk/bv [L, k, h] (qkv_bias)          bo [L, d] (o_bias)
             lambda_q1/k1/q2/k2 [L, h] float32 (diff, gda)     subln [L, 2h] (gda)
  layers/mlp/w_gate, w_up [L, d, f]  w_down [L, f, d]          poly_w [L, 3], poly_b [L, 1] (polynorm)
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from motif_jax import sharding as shd
from motif_jax.model.config import ModelConfig

Initializer = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]
Params = dict[str, Any]

# The config field that sets the size of each logical axis (named in sharding errors).
AXIS_FIELDS = {"embed": "d_model", "heads": "num_heads", "kv_heads": "num_kv_heads",
               "head_dim": "head_dim", "ffw": "d_ff", "vocab": "vocab_size",
               "layers": "num_layers"}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]  # logical axis per dim
  init: Initializer
  dtype: str | None = None  # None: cfg.param_dtype

  def __post_init__(self):
    if len(self.shape) != len(self.axes):
      raise ValueError(f"ParamSpec shape {self.shape} and axes {self.axes} differ in rank")


def normal(std: float) -> Initializer:
  def init(key, shape, dtype):
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  return init


def constant(value: float | tuple[float, ...]) -> Initializer:
  def init(key, shape, dtype):
    del key
    return jnp.broadcast_to(jnp.asarray(value, jnp.float32), shape).astype(dtype)
  return init


def _attention_specs(cfg: ModelConfig) -> dict[str, ParamSpec]:
  l, d, n, k, h = cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  w = normal(cfg.init_std)
  specs = {
      "wq": ParamSpec((l, d, n, h), ("layers", "embed", "heads", "head_dim"), w),
      "wk": ParamSpec((l, d, k, h), ("layers", "embed", "kv_heads", "head_dim"), w),
      "wv": ParamSpec((l, d, k, h), ("layers", "embed", "kv_heads", "head_dim"), w),
      "wo": ParamSpec((l, cfg.num_out_heads, cfg.value_dim, d),
                      ("layers", "heads", "head_dim", "embed"), w),
  }
  if cfg.qkv_bias:
    zeros = constant(0.0)
    specs["bq"] = ParamSpec((l, n, h), ("layers", "heads", "head_dim"), zeros)
    specs["bk"] = ParamSpec((l, k, h), ("layers", "kv_heads", "head_dim"), zeros)
    specs["bv"] = ParamSpec((l, k, h), ("layers", "kv_heads", "head_dim"), zeros)
  if cfg.o_bias:
    specs["bo"] = ParamSpec((l, d), ("layers", "embed"), constant(0.0))
  if cfg.attention in ("diff", "gda"):
    lam = normal(cfg.lambda_std)
    for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
      specs[name] = ParamSpec((l, h), ("layers", "head_dim"), lam, dtype="float32")
  if cfg.attention == "gda":
    specs["subln"] = ParamSpec((l, 2 * h), ("layers", "head_dim"), constant(1.0))
  return specs


def _mlp_specs(cfg: ModelConfig) -> dict[str, ParamSpec]:
  l, d, f = cfg.num_layers, cfg.d_model, cfg.d_ff
  w = normal(cfg.init_std)
  specs = {
      "w_gate": ParamSpec((l, d, f), ("layers", "embed", "ffw"), w),
      "w_up": ParamSpec((l, d, f), ("layers", "embed", "ffw"), w),
      "w_down": ParamSpec((l, f, d), ("layers", "ffw", "embed"), w),
  }
  if cfg.mlp == "polynorm":
    # PolyNorm coefficients for (x³, x², x) and a bias; recipe §1.4 init [1/3, 1/3, 1/3], 0.
    specs["poly_w"] = ParamSpec((l, 3), ("layers", None), constant((1 / 3, 1 / 3, 1 / 3)),
                                dtype="float32")
    specs["poly_b"] = ParamSpec((l, 1), ("layers", None), constant(0.0), dtype="float32")
  return specs


def param_specs(cfg: ModelConfig) -> Params:
  """The full parameter tree as `ParamSpec` leaves."""
  l, d, v = cfg.num_layers, cfg.d_model, cfg.vocab_size
  ones = constant(1.0)
  specs: Params = {
      "embed": ParamSpec((v, d), ("vocab", "embed"), normal(cfg.init_std)),
      "layers": {
          "attn_norm": ParamSpec((l, d), ("layers", "embed"), ones),
          "attn": _attention_specs(cfg),
          "mlp_norm": ParamSpec((l, d), ("layers", "embed"), ones),
          "mlp": _mlp_specs(cfg),
      },
      "final_norm": ParamSpec((d,), ("embed",), ones),
  }
  if not cfg.tie_embeddings:
    specs["unembed"] = ParamSpec((d, v), ("embed", "vocab"), normal(cfg.init_std))
  return specs


def _is_spec(x: Any) -> bool:
  return isinstance(x, ParamSpec)


def _path_str(path) -> str:
  return "/".join(str(getattr(p, "key", p)) for p in path)


def _leaf_dtype(spec: ParamSpec, cfg: ModelConfig):
  return jnp.dtype(spec.dtype or cfg.param_dtype)


def _init(key: jax.Array, cfg: ModelConfig) -> Params:
  def init_leaf(path, spec: ParamSpec):
    # Key from the path, so adding a parameter does not change the others' values.
    leaf_key = jax.random.fold_in(key, zlib.crc32(_path_str(path).encode()) & 0x7FFFFFFF)
    return spec.init(leaf_key, spec.shape, _leaf_dtype(spec, cfg))
  return jax.tree_util.tree_map_with_path(init_leaf, param_specs(cfg), is_leaf=_is_spec)


def abstract_params(cfg: ModelConfig) -> Params:
  """`jax.ShapeDtypeStruct` tree of the parameters; allocates nothing."""
  return jax.eval_shape(functools.partial(_init, cfg=cfg), jax.random.key(0))


def param_logical_axes(cfg: ModelConfig) -> Params:
  return jax.tree.map(lambda s: s.axes, param_specs(cfg), is_leaf=_is_spec)


def param_partition_specs(cfg: ModelConfig) -> Params:
  return jax.tree.map(lambda s: shd.spec_for(s.axes, cfg.sharding), param_specs(cfg),
                      is_leaf=_is_spec)


def param_shardings(cfg: ModelConfig, mesh: Mesh) -> Params:
  return jax.tree.map(lambda s: NamedSharding(mesh, shd.spec_for(s.axes, cfg.sharding)),
                      param_specs(cfg), is_leaf=_is_spec)


def validate_sharding(cfg: ModelConfig, mesh_shape: Mapping[str, int]) -> None:
  """Raise a `ValueError` naming each config field whose dimension does not divide its shards."""
  problems: dict[str, str] = {}

  def check(path, spec: ParamSpec):
    for dim, (size, axis) in enumerate(zip(spec.shape, spec.axes)):
      shards = shd.shard_count(axis, cfg.sharding, mesh_shape)
      field = AXIS_FIELDS.get(axis)
      if size % shards and field not in problems:
        over = "*".join(f"{a}={mesh_shape.get(a, 1)}" for a in cfg.sharding.mesh_axes(axis))
        problems[field] = (
            f"model.{field}={getattr(cfg, field)} does not divide over the mesh: dimension {dim} "
            f"(size {size}, logical axis {axis!r}) of parameter {_path_str(path)!r} is split "
            f"over {over} ({shards} shards)")

  # For gda, a shard count dividing num_kv_heads = 2G, num_heads = G(r+1) and the G·r o_proj
  # heads also divides G = G(r+1) − G·r, so shards always hold whole head groups.
  jax.tree_util.tree_map_with_path(check, param_specs(cfg), is_leaf=_is_spec)
  if problems:
    raise ValueError("; ".join(problems.values()))


def init_params(key: jax.Array, cfg: ModelConfig, mesh: Mesh | None = None) -> Params:
  """Materialize parameters, sharded on `mesh` as they are created (replicated-free)."""
  if mesh is None:
    return jax.jit(_init, static_argnums=1)(key, cfg)
  validate_sharding(cfg, dict(zip(mesh.axis_names, mesh.devices.shape)))
  return jax.jit(_init, static_argnums=1, out_shardings=param_shardings(cfg, mesh))(key, cfg)


def count_params(tree: Params) -> int:
  """Exact parameter count of a spec, abstract or concrete tree."""
  leaves = jax.tree.leaves(tree, is_leaf=_is_spec)
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in leaves))
