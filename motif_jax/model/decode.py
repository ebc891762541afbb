"""KV-cache inference: chunked prefill of whole prompts, then one token (or a block) per row per
step.

The cache holds each layer's rotated K and V as its own array, `{"k": [L × [b, k, h, S]], "v":
[L × [b, k, S, h]]}` (KV-head-major: the layouts the decode attention reads in place, with no
transposed copy per step; K is [b, k, S, h] for gda, `attention.k_slots_last`), and the layer
weights are sliced out of the stacked training tree once (`decode_params`, which also stacks
each MLP's gate and up matrices for one dot per step), before any loop:
slicing the stacked `[L, …]` weights inside a decode loop made XLA copy them on
every step (CPU, measured in `motif_jax/bench/sampler.py`), and so did a scan whose per-layer
outputs are the cache. Decode layers run as an unrolled Python loop; prefill, once per call,
scans the stacked layers (one compiled layer).

`prefill` writes the K/V of positions 0..t-1 of every row, `chunk` tokens per forward pass;
`decode_step` runs row b at its own position pos_b[b] (ragged prompts); `decode_block` feeds t
tokens per row from there. All reuse the training path's projections and its gqa / diff / gda
cores (`attention.attention_prefill` and `attention_step`), so they compute what `forward`
computes on the same prefix (tested).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from motif_jax import sharding as shd
from motif_jax.model import attention as attn
from motif_jax.model import layers
from motif_jax.model.config import ModelConfig
from motif_jax.model.transformer import embed

Cache = dict[str, list[jax.Array]]
CACHE_AXES = ("batch", "kv_heads", None, "head_dim")  # V (and gda's K): [b, k, S, h]
K_CACHE_AXES = ("batch", "kv_heads", "head_dim", None)  # K with its slots last: [b, k, h, S]


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> Cache:
  """Zeros for `max_len` slots per row; rows over the batch axes, KV heads over tensor."""
  def zeros(shape, axes):
    return [shd.constrain(jnp.zeros(shape, cfg.dtype), axes, cfg.sharding)
            for _ in range(cfg.num_layers)]
  v_shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
  return {"k": zeros(attn.k_cache_shape(cfg, batch, max_len), cache_axes("k", cfg)),
          "v": zeros(v_shape, CACHE_AXES)}


def grow_cache(cache: Cache, slots: int, cfg: ModelConfig) -> Cache:
  """`cache` with zero slots appended up to `slots` per row (the sampler's next window)."""
  def grow(c, name):
    axes = cache_axes(name, cfg)
    axis = axes.index(None)  # the slot axis: the one logical axis that is never sharded
    pad = [(0, 0)] * c.ndim
    pad[axis] = (0, slots - c.shape[axis])
    return shd.constrain(jnp.pad(c, pad), axes, cfg.sharding)
  return {name: [grow(c, name) for c in layers] for name, layers in cache.items()}


def cache_axes(name: str, cfg: ModelConfig) -> tuple:
  """Logical axes of cache entry "k" or "v"."""
  return K_CACHE_AXES if name == "k" and attn.k_slots_last(cfg) else CACHE_AXES


def decode_params(params: dict, cfg: ModelConfig) -> dict:
  """`params` with "layers" as a list of per-layer trees, matrices cast to the compute dtype,
  each MLP's w_gate and w_up stacked into one w_gate_up (`_fuse_gate_up`).

  The cast is the one the training forward applies at each use (`w.astype(cfg.dtype)`); norms
  and λ vectors stay as stored. Already-unstacked trees are returned unchanged.
  """
  if isinstance(params["layers"], list):
    return params
  def cast(w):
    return w.astype(cfg.dtype) if w.ndim >= 2 else w
  stacked = params["layers"]
  per_layer = [jax.tree.map(lambda w, i=i: cast(w[i]), stacked) for i in range(cfg.num_layers)]
  return {**params, "layers": [_fuse_gate_up(p) for p in per_layer]}


def _fuse_gate_up(layer: dict) -> dict:
  """The MLP's gate and up matrices as one [d, 2, f] stack (`layers.mlp` reads "w_gate_up").

  At decode's few rows per step each dot is bound by reading its weights plus a fixed cost per
  call; one dot of both halves made one-token steps 3-11% faster on the side-by-side Llama
  shape (CPU), and 3-draft blocks (32 rows per dot) 1-10% slower (README, Sampling).
  Stacked on a new axis, not concatenated along f: f stays one sharded axis, so under tensor
  parallelism each device keeps its own gate and up columns.
  """
  mlp = dict(layer["mlp"])
  mlp["w_gate_up"] = jnp.stack([mlp.pop("w_gate"), mlp.pop("w_up")], axis=-2)
  return {**layer, "mlp": mlp}


def head_logits(params: dict, h_bd: jax.Array, cfg: ModelConfig) -> jax.Array:
  """float32 next-token logits [b, v] (or [b, t, v]) from final-normed hidden states [b, d] (or
  [b, t, d])."""
  h_bd = h_bd.astype(cfg.dtype)
  if cfg.tie_embeddings:  # contract the [v, d] table directly instead of transposing it
    out_bv = jnp.einsum("...d,vd->...v", h_bd, params["embed"].astype(cfg.dtype),
                        preferred_element_type=jnp.float32)
  else:
    out_bv = jnp.einsum("...d,dv->...v", h_bd, params["unembed"].astype(cfg.dtype),
                        preferred_element_type=jnp.float32)
  axes = ("batch",) + (None,) * (out_bv.ndim - 2) + ("vocab",)
  return shd.constrain(out_bv, axes, cfg.sharding)


def _decode_layers(x_btd, params, cache, attention_fn, cfg):
  """Pre-norm blocks, unrolled over per-layer params; attention_fn(h, p, i, k, v) -> (out, k, v)."""
  k_cache, v_cache = list(cache["k"]), list(cache["v"])
  for i, p in enumerate(params["layers"]):
    h_btd = layers.rms_norm(x_btd, p["attn_norm"], cfg.rms_norm_eps)
    out_btd, k_cache[i], v_cache[i] = attention_fn(h_btd, p["attn"], i, k_cache[i], v_cache[i])
    x_btd = x_btd + out_btd
    x_btd = x_btd + layers.mlp(layers.rms_norm(x_btd, p["mlp_norm"], cfg.rms_norm_eps),
                               p["mlp"], cfg)
  x_btd = layers.rms_norm(x_btd, params["final_norm"], cfg.rms_norm_eps)
  return x_btd, {"k": k_cache, "v": v_cache}


def prefill(params: dict, tokens_bt: jax.Array, lengths_b: jax.Array, cache: Cache,
            cfg: ModelConfig, *, chunk: int) -> tuple[jax.Array, Cache]:
  """Run right-padded prompts through the model, `chunk` positions per pass, filling the cache.

  `params` are the stacked training tree: prefill runs once per call, so it scans the layers (one
  compiled layer; the per-layer weight slices are cheap next to a whole prompt). Returns the
  final-normed hidden state of each row's last prompt token (position lengths_b[b] - 1), [b, d].
  Slots past a row's length hold padding K/V; decoding overwrites them before any query can see
  them (decode_step masks slots after the row's position).
  """
  b, t = tokens_bt.shape
  # K: [L, b, k, h, S], or [L, b, k, S, h] for gda (attention.k_slots_last)
  k_stack, v_lbskh = jnp.stack(cache["k"]), jnp.stack(cache["v"])
  h_last_bd = jnp.zeros((b, cfg.d_model), cfg.dtype)
  for start in range(0, t, chunk):
    size = min(chunk, t - start)
    cos_1th, sin_1th = layers.rope_tables(start + jnp.arange(size)[None], cfg.head_dim,
                                          cfg.rope_theta)

    def body(x_btd, layer_in, start=start, cos_1th=cos_1th, sin_1th=sin_1th):
      p, i, k_cache, v_bksh = layer_in
      h_btd = layers.rms_norm(x_btd, p["attn_norm"], cfg.rms_norm_eps)
      out_btd, k_cache, v_bksh = attn.attention_prefill(h_btd, p["attn"], i, cos_1th, sin_1th,
                                                        k_cache, v_bksh, start, cfg)
      x_btd = x_btd + out_btd
      x_btd = x_btd + layers.mlp(layers.rms_norm(x_btd, p["mlp_norm"], cfg.rms_norm_eps),
                                 p["mlp"], cfg)
      return x_btd, (k_cache, v_bksh)

    x_btd = embed(params, tokens_bt[:, start:start + size], cfg)
    x_btd, (k_stack, v_lbskh) = jax.lax.scan(
        body, x_btd, (params["layers"], jnp.arange(cfg.num_layers), k_stack, v_lbskh))
    x_btd = layers.rms_norm(x_btd, params["final_norm"], cfg.rms_norm_eps)
    last_b = lengths_b - 1 - start
    here_b = (last_b >= 0) & (last_b < size)
    picked_bd = jnp.take_along_axis(x_btd, jnp.clip(last_b, 0, size - 1)[:, None, None],
                                    axis=1)[:, 0]
    h_last_bd = jnp.where(here_b[:, None], picked_bd, h_last_bd)
  return h_last_bd, {"k": list(k_stack), "v": list(v_lbskh)}


def decode_block(params: dict, tokens_bt: jax.Array, pos_b: jax.Array | int, cache: Cache,
                 cfg: ModelConfig) -> tuple[jax.Array, Cache]:
  """Feed t tokens per row, row b's at positions pos_b[b] .. pos_b[b] + t - 1 (per row, or one
  int for all): (float32 logits [b, t, v], updated cache). t > 1 verifies a block of drafted
  tokens in one pass (the sampler's speculative decoding)."""
  params = decode_params(params, cfg)
  b, t = tokens_bt.shape
  pos_b = jnp.broadcast_to(jnp.asarray(pos_b, jnp.int32), (b,))
  # RoPE rows gathered from a table over every cache slot: the table does not depend on the step,
  # so XLA hoists it out of a decode loop, where cos/sin of the positions themselves were fused
  # into (and recomputed by) each layer's q and k rotation, 2 per layer per step.
  slots = cache["v"][0].shape[2]
  cos_1sh, sin_1sh = layers.rope_tables(jnp.arange(slots)[None], cfg.head_dim, cfg.rope_theta)
  pos_bt = pos_b[:, None] + jnp.arange(t)[None]
  cos_bth = jnp.take(cos_1sh[0], pos_bt, axis=0, mode="clip")
  sin_bth = jnp.take(sin_1sh[0], pos_bt, axis=0, mode="clip")
  x_btd = embed(params, tokens_bt, cfg)

  def attention_fn(h, p, i, k, v):
    return attn.attention_step(h, p, i, cos_bth, sin_bth, k, v, pos_b, cfg)

  x_btd, cache = _decode_layers(x_btd, params, cache, attention_fn, cfg)
  return head_logits(params, x_btd, cfg), cache


def decode_step(params: dict, tokens_b: jax.Array, pos_b: jax.Array | int, cache: Cache,
                cfg: ModelConfig) -> tuple[jax.Array, Cache]:
  """Feed tokens_b at positions pos_b (per row, or one int for all): (float32 logits [b, v],
  updated cache)."""
  logits_b1v, cache = decode_block(params, tokens_b[:, None], pos_b, cache, cfg)
  return logits_b1v[:, 0], cache
