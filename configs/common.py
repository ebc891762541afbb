"""Shared pieces of config files: `parse_arg` for variants, and the model/mesh sections.

Config files import only ml_collections and this module. Defaults live here and in the config
files, never in library code; the library receives frozen typed configs.
"""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
  """'smoke,seq=128' -> ConfigDict(smoke=True, seq=128) against defaults given in `spec`.

  A bare name sets a bool to True; `name=value` is converted with the type of the default.
  Unknown names raise, listing the accepted ones.
  """
  out = ml_collections.ConfigDict(dict(spec))
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    name, sep, value = item.partition("=")
    if name not in spec:
      raise ValueError(f"unknown config variant {name!r}; accepted: {sorted(spec)}")
    default = spec[name]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config variant {name!r} needs a value ({name}=...)")
      out[name] = True
    elif isinstance(default, bool):
      out[name] = value.lower() in ("1", "true", "yes")
    else:
      out[name] = type(default)(value)
  return out


def sharding_rules() -> ml_collections.ConfigDict:
  """Logical axis -> mesh axes (motif_jax.sharding.ShardingRules)."""
  return ml_collections.ConfigDict(dict(
      batch=("data", "fsdp"),  # activations' batch axis
      seq="sequence",  # sequence / context parallelism
      embed="fsdp",  # model width of parameters (FSDP); activations keep it whole
      heads="tensor",  # query heads (tensor parallel)
      kv_heads="tensor",  # key/value heads
      head_dim=None,
      ffw="tensor",  # MLP hidden width
      vocab="tensor",  # embedding and output-head vocabulary
      layers=None,  # stacked-layer axis
  ))


def model(**overrides) -> ml_collections.ConfigDict:
  """Every ModelConfig field, with defaults; architecture numbers come from `overrides`."""
  cfg = ml_collections.ConfigDict(dict(
      vocab_size=0,  # tokens
      d_model=0,  # model width
      num_layers=0,
      num_heads=0,  # query heads (gda: signal + noise)
      num_kv_heads=0,  # key/value heads (gda: K1/V1 and K2/V2 interleaved)
      head_dim=0,  # per-head width of q and k (values: 2x for diff/gda)
      d_ff=0,  # MLP hidden width
      attention="gqa",  # gqa | diff | gda
      gda_ratio=4,  # gda: signal heads per noise head
      mlp="swiglu",  # swiglu | polynorm
      qkv_bias=False,  # biases on q/k/v projections (Qwen2)
      o_bias=False,  # bias on the output projection
      rope_theta=10_000.0,  # RoPE base
      rms_norm_eps=1e-6,
      attn_rms_norm_eps=1e-5,  # SubLN / group norm inside diff and gda attention
      polynorm_eps=1e-6,
      tie_embeddings=False,  # output head = embedding transpose
      max_seq_len=4096,  # tokens; recorded in exports and FLOP reports
      dtype="float32",  # activation / matmul dtype: float32 | bfloat16
      param_dtype="float32",  # weight storage dtype (master weights)
      init_std=0.02,  # std of normal weight init
      lambda_std=0.1,  # std of λ-vector init (diff, gda)
      scan_layers=True,  # lax.scan over stacked layers (False: unrolled, test oracle)
      remat="none",  # none | full | dots | attn_out | qkv_attn_out
      attention_impl="xla",  # attention kernel
      sharding=sharding_rules(),
  ))
  for key, value in overrides.items():
    if key not in cfg:
      raise KeyError(f"unknown model field {key!r}")
    cfg[key] = value
  return cfg


def mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, sequence: int = 1):
  """Device mesh sizes; their product must equal the number of devices."""
  return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, sequence=sequence))
