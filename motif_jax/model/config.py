"""Frozen, validated model configuration: the typed boundary between ml_collections and the model.

`ModelConfig` is hashable, so it is passed to jitted functions as a static argument. Defaults live
in `configs/`; `from_config_dict` requires every field to be given, and every check raises a
`ValueError` whose message starts with `model.<field>`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from motif_jax.sharding import ShardingRules

ATTENTION_KINDS = ("gqa", "diff", "gda")
MLP_KINDS = ("swiglu", "polynorm")
REMAT_NAMES = ("none", "full", "dots", "attn_out", "qkv_attn_out", "offload")
ATTENTION_IMPLS = ("xla", "pallas", "cudnn", "reference")
CONTEXT_PARALLEL_METHODS = ("allgather", "ring")
DTYPES = ("float32", "bfloat16", "float16")
# How the model runs, not what it computes: a checkpoint fits any setting of these, and saved
# configs that predate one of them load with its default.
RUNTIME_FIELDS = ("remat", "scan_layers", "scan_unroll", "attention_impl", "context_parallel",
                  "dtype", "max_seq_len", "sharding")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics of a decoder-only transformer (Motif, Llama, Qwen2, DiffLlama)."""

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int  # query heads; for gda signal + noise heads
  num_kv_heads: int  # for gda: K1/V1 plus K2/V2 heads, interleaved
  head_dim: int
  d_ff: int
  attention: str = "gqa"  # gqa | diff | gda
  gda_ratio: int = 4  # gda: signal query heads per noise head
  mlp: str = "swiglu"  # swiglu | polynorm
  qkv_bias: bool = False
  o_bias: bool = False
  rope_theta: float = 10_000.0
  rms_norm_eps: float = 1e-6
  attn_rms_norm_eps: float = 1e-5  # SubLN inside diff / gda attention
  polynorm_eps: float = 1e-6
  tie_embeddings: bool = False
  max_seq_len: int = 4096  # only for exports and FLOP reports; the model itself has no limit
  dtype: str = "float32"  # compute dtype of activations and matmuls
  param_dtype: str = "float32"  # storage dtype of weights (λ vectors are always float32)
  init_std: float = 0.02
  lambda_std: float = 0.1
  scan_layers: bool = True
  # Layers per scan iteration (lax.scan's unroll); >= num_layers runs the layers as straight-line
  # code (fastest on CPU for small models; a rolled scan compiles once per layer shape).
  scan_unroll: int = 1
  remat: str = "none"
  attention_impl: str = "xla"  # xla (blockwise, O(s)) | pallas | cudnn (GPU) | reference (dense)
  # sequence-sharded attention: ring (ppermute K/V blocks) | allgather (K/V gathered per layer)
  context_parallel: str = "ring"
  sharding: ShardingRules = ShardingRules()

  def __post_init__(self):
    positive = ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "d_ff", "gda_ratio", "max_seq_len", "scan_unroll")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"model.{name}={value!r} must be a positive integer")
    for name in ("rms_norm_eps", "attn_rms_norm_eps", "polynorm_eps", "rope_theta", "init_std"):
      if not getattr(self, name) > 0:
        raise ValueError(f"model.{name}={getattr(self, name)!r} must be positive")
    _choice("attention", self.attention, ATTENTION_KINDS)
    _choice("mlp", self.mlp, MLP_KINDS)
    _choice("remat", self.remat, REMAT_NAMES)
    _choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
    _choice("context_parallel", self.context_parallel, CONTEXT_PARALLEL_METHODS)
    _choice("dtype", self.dtype, DTYPES)
    if self.attention_impl == "cudnn" and self.dtype == "float32":
      raise ValueError("model.attention_impl='cudnn' needs model.dtype bfloat16 or float16 "
                       "(cuDNN flash attention has no float32 kernel); use 'xla' or 'pallas'")
    _choice("param_dtype", self.param_dtype, DTYPES)
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim={self.head_dim} must be even (rotate-half RoPE)")
    if self.attention == "gda":
      if self.num_kv_heads % 2:
        raise ValueError(f"model.num_kv_heads={self.num_kv_heads} must be even for gda "
                         "(interleaved K1/V1, K2/V2 pairs)")
      expected = self.num_groups * (self.gda_ratio + 1)
      if self.num_heads != expected:
        raise ValueError(
            f"model.num_heads={self.num_heads} must equal (num_kv_heads/2) * (gda_ratio+1) = "
            f"{self.num_groups} * {self.gda_ratio + 1} = {expected} for gda")
    else:
      if self.num_heads % self.num_kv_heads:
        raise ValueError(f"model.num_heads={self.num_heads} must be a multiple of "
                         f"model.num_kv_heads={self.num_kv_heads}")
    if self.attention == "diff":
      if self.num_heads % 2 or self.num_kv_heads % 2:
        raise ValueError(f"model.num_heads={self.num_heads} and model.num_kv_heads="
                         f"{self.num_kv_heads} must both be even for diff attention")

  # Derived shapes -------------------------------------------------------------------------------

  @property
  def num_groups(self) -> int:
    """gda: KV pairs; each group has `gda_ratio` signal heads and one noise head."""
    return self.num_kv_heads // 2

  @property
  def num_out_heads(self) -> int:
    """Heads entering o_proj (value width `value_dim` each)."""
    if self.attention == "gda":
      return self.num_groups * self.gda_ratio
    if self.attention == "diff":
      return self.num_heads // 2
    return self.num_heads

  @property
  def value_dim(self) -> int:
    return self.head_dim if self.attention == "gqa" else 2 * self.head_dim

  def lambda_init(self, layer: Any) -> Any:
    """λ_init for a 0-based layer index (works on Python ints and traced arrays).

    gda copies Motif's code convention, 0.8 − 0.6·exp(−0.3·(l − 1)) with 0-based l (recipe §1.3);
    diff copies Hugging Face DiffLlama, 0.8 − 0.6·exp(−0.3·l).
    """
    offset = 1 if self.attention == "gda" else 0
    exp = math.exp if isinstance(layer, int) else jnp.exp
    return 0.8 - 0.6 * exp(-0.3 * (layer - offset))

  def architecture(self) -> "ModelConfig":
    """This config with every runtime field at its default: equal iff the weights fit."""
    defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in RUNTIME_FIELDS}
    return dataclasses.replace(self, **defaults)

  @classmethod
  def from_config_dict(cls, config: Mapping[str, Any]) -> "ModelConfig":
    """Build from `config.model` (a ConfigDict or dict); unknown or missing fields raise."""
    values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown model config fields: {', '.join('model.' + u for u in unknown)}")
    missing = sorted(known - set(values))
    if missing:
      raise ValueError(f"missing model config fields: {', '.join('model.' + m for m in missing)}")
    sharding = values.pop("sharding")
    if not isinstance(sharding, ShardingRules):
      try:
        sharding = ShardingRules(**dict(sharding))
      except (TypeError, ValueError) as e:
        raise ValueError(f"model.sharding: {e}") from e
    return cls(sharding=sharding, **values)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"model.{name}={value!r} must be one of {choices}")

