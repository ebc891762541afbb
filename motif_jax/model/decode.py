"""Incremental decoding with a KV cache: one token per step for every row of a batch.

`decode_step` runs the decoder on tokens [b] at position `pos` (the same for all rows), writing
each layer's rotated K and V into the cache [L, b, S, k, h] and attending to cache slots
0..pos. It reuses the attention projections and the gqa / diff / gda cores of the training path,
so decoding computes exactly what `forward` computes on the same prefix (tested).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from motif_jax.model import attention as attn
from motif_jax.model import layers
from motif_jax.model.config import ModelConfig
from motif_jax.model.transformer import embed, unembed_matrix


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict[str, jax.Array]:
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}


def decode_step(params: dict, tokens_b: jax.Array, pos: jax.Array, cache: dict,
                cfg: ModelConfig) -> tuple[jax.Array, dict]:
  """(float32 logits [b, v] for the next token, updated cache)."""
  b = tokens_b.shape[0]
  x_b1d = embed(params, tokens_b[:, None], cfg)
  positions_b1 = jnp.full((b, 1), pos, jnp.int32)
  cos_b1h, sin_b1h = layers.rope_tables(positions_b1, cfg.head_dim, cfg.rope_theta)
  valid_b1s = jnp.broadcast_to(jnp.arange(cache["k"].shape[2])[None, None, :] <= pos,
                               (b, 1, cache["k"].shape[2]))

  def body(x_b1d, layer_in):
    p, layer, k_bskh, v_bskh = layer_in
    h_b1d = layers.rms_norm(x_b1d, p["attn_norm"], cfg.rms_norm_eps)
    out_b1d, k_bskh, v_bskh = attn.attention_step(h_b1d, p["attn"], layer, cos_b1h, sin_b1h,
                                                  k_bskh, v_bskh, pos, valid_b1s, cfg)
    x_b1d = x_b1d + out_b1d
    x_b1d = x_b1d + layers.mlp(layers.rms_norm(x_b1d, p["mlp_norm"], cfg.rms_norm_eps),
                               p["mlp"], cfg)
    return x_b1d, (k_bskh, v_bskh)

  x_b1d, (k_cache, v_cache) = jax.lax.scan(
      body, x_b1d, (params["layers"], jnp.arange(cfg.num_layers), cache["k"], cache["v"]))
  h_bd = layers.rms_norm(x_b1d, params["final_norm"], cfg.rms_norm_eps)[:, 0]
  logits_bv = jnp.einsum("bd,dv->bv", h_bd, unembed_matrix(params, cfg).astype(cfg.dtype),
                         preferred_element_type=jnp.float32)
  return logits_bv, {"k": k_cache, "v": v_cache}
