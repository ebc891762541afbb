"""Self-attention variants: GQA (Llama/Qwen2), DIFF (HF DiffLlama) and GDA (Motif-2).

All three share one masked softmax core over grouped queries `q_btkgh`: k KV heads, each serving
g query heads. Differential variants reuse it with a doubled value width (V1 ‖ V2), so one softmax
is applied to both value slabs (recipe §1.3 efficiency note). `cfg.attention_impl` picks the core
(`ATTEND`): "reference" is the dense `attend` below (the test oracle), "xla" the O(s)-memory
blockwise path and "pallas" the Triton kernels of `pallas_kernels.flash_attention` (interpreted on
CPU), "cudnn" `jax.nn.dot_product_attention` (GPU only, see `attend_dot_product`). When the
ambient mesh shards the sequence, every impl becomes `parallel.context.context_attend`
(all-gathered K/V, zig-zag chunks); the GQA / DIFF / GDA math around the core is unchanged.

GDA layout (recipe §1.3): q heads are group-major stripes [G, ratio+1] with the last head of each
group the noise head; K/V heads are interleaved pairs [G, 2] (even = K1/V1, odd = K2/V2).
DIFF layout (HF DiffLlama): the first n/2 query heads are signal, the last n/2 noise; KV head j
reads V[j mod k/2] ‖ V[j mod k/2 + k/2].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from motif_jax import sharding as shd
from motif_jax.model import layers
from motif_jax.model.config import ModelConfig
from motif_jax.parallel import context
from pallas_kernels import flash_attention as fa


def attention_mask(segment_ids_bt: jax.Array) -> jax.Array:
  """[b, t, s] bool: causal and within the same packed segment."""
  t = segment_ids_bt.shape[1]
  causal_ts = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
  same_bts = segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
  return causal_ts[None] & same_bts


def attend(q_btkgh: jax.Array, k_bskh: jax.Array, v_bskv: jax.Array,
           segment_ids_bt: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(h) + mask) v with float32 logits and softmax; returns o_btkgv."""
  return attend_masked(q_btkgh, k_bskh, v_bskv, attention_mask(segment_ids_bt))


def attend_masked(q_btkgh: jax.Array, k_bskh: jax.Array, v_bskv: jax.Array,
                  mask_bts: jax.Array) -> jax.Array:
  """Dense attention under an explicit [b, t, s] mask (also the KV-cache decode path).

  Computed heads-major ([b, k, g, t, h] against [b, k, s, h]): both dots are then batched 2-D
  matmuls over leading (b, k), which XLA CPU runs without transposed copies (forward + backward
  of the side-by-side Llama's core at 8 x 256: 27.5 -> 13.9 ms).
  """
  scale = q_btkgh.shape[-1] ** -0.5
  q_bkgth = jnp.moveaxis(q_btkgh, 1, 3)
  k_bksh, v_bksv = jnp.moveaxis(k_bskh, 1, 2), jnp.moveaxis(v_bskv, 1, 2)
  logits_bkgts = jnp.einsum("bkgth,bksh->bkgts", q_bkgth, k_bksh,
                            preferred_element_type=jnp.float32) * scale
  logits_bkgts = jnp.where(mask_bts[:, None, None], logits_bkgts, jnp.finfo(jnp.float32).min)
  probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1)
  o_bkgtv = jnp.einsum("bkgts,bksv->bkgtv", probs_bkgts.astype(v_bskv.dtype), v_bksv,
                       preferred_element_type=jnp.float32)
  return jnp.moveaxis(o_bkgtv, 3, 1).astype(q_btkgh.dtype)


def attend_flash(q_btkgh: jax.Array, k_bskh: jax.Array, v_bskv: jax.Array,
                 segment_ids_bt: jax.Array, *, impl: str) -> jax.Array:
  """`attend` without a [t, s] tensor: pallas_kernels.flash_attention (its lse is unused)."""
  o_btkgv, _ = fa.flash_attention(q_btkgh, k_bskh, v_bskv, segment_ids_bt, causal=True, impl=impl)
  return o_btkgv


def attend_dot_product(q_btkgh: jax.Array, k_bskh: jax.Array, v_bskv: jax.Array,
                       segment_ids_bt: jax.Array, *, implementation: str = "cudnn") -> jax.Array:
  """`attend` through jax.nn.dot_product_attention (cuDNN flash attention on GPU).

  That API needs value width == QK width, so a dual-V value (width 2h) takes one call per
  h-wide slab (V1, then V2): two fused kernels instead of one softmax for both. Segment ids go
  in as a boolean [b, 1, t, s] mask, which cuDNN receives as an additive bias: O(t·s) memory,
  fine at a few thousand tokens, not at 64K (use "pallas" or "xla" there). `implementation="xla"`
  runs the same wrapper on CPU for tests.
  """
  b, t, k, g, h = q_btkgh.shape
  vd = v_bskv.shape[-1]
  if vd % h:
    raise ValueError(f"dot_product_attention needs value width {vd} to be a multiple of the "
                     f"head dim {h}")
  q_btnh = q_btkgh.reshape(b, t, k * g, h)  # query head k_index * g + g_index, as in jax.nn
  same_b1ts = (segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :])[:, None]
  slabs = [jax.nn.dot_product_attention(q_btnh, k_bskh, v_bskv[..., i * h:(i + 1) * h],
                                        mask=same_b1ts, is_causal=True,
                                        implementation=implementation)
           for i in range(vd // h)]
  return jnp.concatenate(slabs, axis=-1).reshape(b, t, k, g, vd)


ATTEND = {
    "reference": attend,
    "xla": functools.partial(attend_flash, impl="xla"),
    "pallas": functools.partial(attend_flash, impl="pallas"),
    "cudnn": functools.partial(attend_dot_product, implementation="cudnn"),
}


def diff_lambda(p: dict, lambda_init: jax.Array, dtype) -> jax.Array:
  """λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init, exponentials in float32 (recipe §1.3)."""
  f32 = jnp.float32
  lam1 = jnp.exp(jnp.sum(p["lambda_q1"].astype(f32) * p["lambda_k1"].astype(f32), axis=-1))
  lam2 = jnp.exp(jnp.sum(p["lambda_q2"].astype(f32) * p["lambda_k2"].astype(f32), axis=-1))
  return (lam1.astype(dtype) - lam2.astype(dtype) + lambda_init).astype(dtype)


def _differential(signal: jax.Array, lam: jax.Array, noise: jax.Array) -> jax.Array:
  """signal − λ·noise, λ·noise in float32 and broadcast to signal's heads there: the backward
  sums over every token and head for λ's gradient, and over the heads a noise head serves for
  its own, in float32 rather than in a bf16 compute dtype."""
  noise32 = jnp.broadcast_to(noise.astype(jnp.float32), signal.shape)
  return signal - (lam * noise32).astype(signal.dtype)


def _gqa_core(q_btnh, k_bskh, v_bskh, attend_fn, p, layer, cfg):
  del p, layer
  b, t, n, h = q_btnh.shape
  k = cfg.num_kv_heads
  o_btkgh = attend_fn(q_btnh.reshape(b, t, k, n // k, h), k_bskh, v_bskh)
  return o_btkgh.reshape(b, t, n, h)


def _diff_core(q_btnh, k_bskh, v_bskh, attend_fn, p, layer, cfg):
  b, t, n, h = q_btnh.shape
  k = cfg.num_kv_heads
  v_half_bskv = jnp.concatenate([v_bskh[:, :, : k // 2], v_bskh[:, :, k // 2:]], axis=-1)
  v_bskv = jnp.concatenate([v_half_bskv, v_half_bskv], axis=2)
  o_btnv = attend_fn(q_btnh.reshape(b, t, k, n // k, h), k_bskh, v_bskv).reshape(b, t, n, 2 * h)
  lam = diff_lambda(p, cfg.lambda_init(layer), jnp.float32)
  o_btnv = _differential(o_btnv[:, :, : n // 2], lam, o_btnv[:, :, n // 2:])
  return layers.rms_norm(o_btnv, None, cfg.attn_rms_norm_eps) * (1 - cfg.lambda_init(layer))


def _gda_core(q_btnh, k_bskh, v_bskh, attend_fn, p, layer, cfg):
  b, t, _, h = q_btnh.shape
  g, r = cfg.num_groups, cfg.gda_ratio
  q_btgrh = q_btnh.reshape(b, t, g, r + 1, h)  # stripe: r signal heads, then 1 noise head
  k_bsg2h = k_bskh.reshape(b, -1, g, 2, h)  # interleaved: even K1, odd K2
  v_bsg2h = v_bskh.reshape(b, -1, g, 2, h)
  v_bsgv = jnp.concatenate([v_bsg2h[:, :, :, 0], v_bsg2h[:, :, :, 1]], axis=-1)  # V1 ‖ V2
  signal_btgrv = attend_fn(q_btgrh[:, :, :, :r], k_bsg2h[:, :, :, 0], v_bsgv)
  noise_btg1v = attend_fn(q_btgrh[:, :, :, r:], k_bsg2h[:, :, :, 1], v_bsgv)
  return _gda_mix(signal_btgrv, noise_btg1v, p, layer, cfg)


def _gda_mix(signal_btgrv, noise_btg1v, p, layer, cfg):
  """GDA after attention: signal − λ·noise, SubLN, (1 − λ_init); heads flattened to g·r."""
  b, t, g, r, v = signal_btgrv.shape
  lam = diff_lambda(p, cfg.lambda_init(layer), jnp.float32)
  o_btgrv = _differential(signal_btgrv, lam, noise_btg1v)  # a noise head serves r signal heads
  o_btgrv = layers.rms_norm(o_btgrv, p["subln"], cfg.attn_rms_norm_eps)
  o_btgrv = o_btgrv * (1 - cfg.lambda_init(layer))
  return o_btgrv.reshape(b, t, g * r, v)


_CORES = {"gqa": _gqa_core, "diff": _diff_core, "gda": _gda_core}


def project_qkv(x_btd: jax.Array, p: dict, cos_bth: jax.Array, sin_bth: jax.Array,
                cfg: ModelConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
  """q_btnh, k_btkh (both rotated) and v_btkh in the compute dtype."""
  dtype = jnp.dtype(cfg.dtype)
  rules = cfg.sharding
  q_btnh = layers.dense(x_btd, p["wq"].astype(dtype))
  k_btkh = layers.dense(x_btd, p["wk"].astype(dtype))
  v_btkh = layers.dense(x_btd, p["wv"].astype(dtype))
  if cfg.qkv_bias:
    # Explicit [None, None]: biases broadcast over (b, t) without implicit rank promotion.
    q_btnh = q_btnh + p["bq"].astype(dtype)[None, None]
    k_btkh = k_btkh + p["bk"].astype(dtype)[None, None]
    v_btkh = v_btkh + p["bv"].astype(dtype)[None, None]
  q_btnh = layers.apply_rope(q_btnh, cos_bth, sin_bth)
  k_btkh = layers.apply_rope(k_btkh, cos_bth, sin_bth)
  q_btnh = checkpoint_name(shd.constrain(q_btnh, ("batch", "seq", "heads", "head_dim"), rules),
                           "query_proj")
  k_btkh = checkpoint_name(shd.constrain(k_btkh, ("batch", "seq", "kv_heads", "head_dim"), rules),
                           "key_proj")
  v_btkh = checkpoint_name(shd.constrain(v_btkh, ("batch", "seq", "kv_heads", "head_dim"), rules),
                           "value_proj")
  return q_btnh, k_btkh, v_btkh


def _output(o_btnv: jax.Array, p: dict, cfg: ModelConfig) -> jax.Array:
  o_btnv = checkpoint_name(shd.constrain(o_btnv, ("batch", "seq", "heads", "head_dim"),
                                         cfg.sharding), "attn_out")
  out_btd = layers.dense(o_btnv, p["wo"].astype(cfg.dtype), contract=2)
  if cfg.o_bias:
    out_btd = out_btd + p["bo"].astype(cfg.dtype)[None, None]
  return out_btd


def attention(x_btd: jax.Array, p: dict, layer: jax.Array, cos_bth: jax.Array,
              sin_bth: jax.Array, segment_ids_bt: jax.Array, cfg: ModelConfig) -> jax.Array:
  """One attention sub-layer: projections, RoPE, the configured core, output projection."""
  q_btnh, k_btkh, v_btkh = project_qkv(x_btd, p, cos_bth, sin_bth, cfg)
  core = ATTEND[cfg.attention_impl]
  if context.sequence_shards(cfg.sharding) > 1:  # rows arrive in zig-zag order (transformer.py)
    core = functools.partial(context.context_attend, rules=cfg.sharding,
                             method=cfg.context_parallel, impl=cfg.attention_impl)
  attend_fn = functools.partial(_with_segments, core, segment_ids_bt=segment_ids_bt)
  o_btnv = _CORES[cfg.attention](q_btnh, k_btkh, v_btkh, attend_fn, p, layer, cfg)
  return _output(o_btnv, p, cfg)


def _with_segments(attend_fn, q_btkgh, k_bskh, v_bskv, *, segment_ids_bt):
  return attend_fn(q_btkgh, k_bskh, v_bskv, segment_ids_bt)


def k_slots_last(cfg: ModelConfig) -> bool:
  """Decode K cache layout: [b, k, h, s] (True: gqa, diff) or [b, k, s, h] (False: gda).

  gqa's q·K batched dot reads K with its slots last in place; with [b, k, s, h] XLA CPU packs K
  on every call, 2x slower (tiny Llama decode step 1.49 -> 1.37 ms). gda's q·K is a fused
  multiply-reduce over h, which runs faster on [b, k, s, h] (3.9 vs 5.7 ms per layer at 128 rows
  x 384 slots), where the per-step K write along the last axis is strided as well.
  """
  return cfg.attention != "gda"


def k_cache_shape(cfg: ModelConfig, batch: int, slots: int) -> tuple[int, int, int, int]:
  k, h = cfg.num_kv_heads, cfg.head_dim
  return (batch, k, h, slots) if k_slots_last(cfg) else (batch, k, slots, h)


def _k_cache_bskh(k_cache: jax.Array, cfg: ModelConfig) -> jax.Array:
  """The K cache (either layout) as [b, s, k, h], what the training cores take."""
  return jnp.transpose(k_cache, (0, 3, 1, 2) if k_slots_last(cfg) else (0, 2, 1, 3))


def _k_block(k_btkh: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, int]:
  """New keys laid out as the K cache, and the cache's slot axis: ([b, k, h, t], 3) or
  ([b, k, t, h], 2)."""
  if k_slots_last(cfg):
    return jnp.transpose(k_btkh, (0, 2, 3, 1)), 3
  return jnp.swapaxes(k_btkh, 1, 2), 2


def attention_step(x_btd: jax.Array, p: dict, layer: int | jax.Array, cos_bth: jax.Array,
                   sin_bth: jax.Array, k_cache: jax.Array, v_cache_bksh: jax.Array,
                   pos_b: jax.Array, cfg: ModelConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Decode t tokens per row (t = 1, or a draft block to verify), row b's at its own positions
  pos_b[b] .. pos_b[b] + t - 1 (ragged batches).

  Writes their K/V into those cache slots of the row, then query j attends to slots <=
  pos_b[b] + j. The cache is KV-head-major, V as [b, k, s, h] and K as `k_slots_last` says:
  the gqa and gda decode cores below read both in place (batch and head axes leading), where the
  training cores' reshapes and V1 ‖ V2 concatenation would copy the whole cache every step. diff
  uses the training core on transposed views (correct, with those copies).
  """
  q_btnh, k_btkh, v_btkh = project_qkv(x_btd, p, cos_bth, sin_bth, cfg)
  # A per-row dynamic_update_slice (vmapped: a scatter on the batch axis, in place in the loop).
  def write(cache_b, new_b, slot_axis):
    return jax.vmap(lambda cache, new, pos: jax.lax.dynamic_update_slice_in_dim(
        cache, new.astype(cache.dtype), pos, axis=slot_axis - 1))(cache_b, new_b, pos_b)
  k_cache = write(k_cache, *_k_block(k_btkh, cfg))
  v_cache_bksh = write(v_cache_bksh, jnp.swapaxes(v_btkh, 1, 2), 2)
  t = x_btd.shape[1]
  query_pos_bt = pos_b[:, None] + jnp.arange(t)[None, :]
  valid_bts = jnp.arange(v_cache_bksh.shape[2])[None, None, :] <= query_pos_bt[:, :, None]
  if cfg.attention == "gqa":
    o_btnv = _decode_gqa(q_btnh, k_cache, v_cache_bksh, valid_bts)
  elif cfg.attention == "gda":
    signal_btgrv, noise_btg1v = _decode_gda(q_btnh, k_cache, v_cache_bksh, valid_bts, cfg)
    o_btnv = _gda_mix(signal_btgrv, noise_btg1v, p, layer, cfg)
  else:
    attend_fn = functools.partial(_masked, mask_bts=valid_bts)
    o_btnv = _CORES[cfg.attention](q_btnh, _k_cache_bskh(k_cache, cfg),
                                   jnp.swapaxes(v_cache_bksh, 1, 2), attend_fn, p, layer, cfg)
  return _output(o_btnv, p, cfg), k_cache, v_cache_bksh


def _masked_softmax(logits, valid):
  """float32 softmax over the last axis, invalid slots at the float32 minimum (as attend)."""
  return jax.nn.softmax(jnp.where(valid, logits, jnp.finfo(jnp.float32).min), axis=-1)


def _decode_gqa(q_btnh, k_bkhs, v_bksh, valid_bts):
  """`attend_masked` for t queries per row on the K [b, k, h, s] / V [b, k, s, h] cache: o_btnh.
  The t queries of a KV head ride with its g group heads (x = t·g rows), so t = 1 is one
  [g, h] x [h, s] dot."""
  b, t, n, h = q_btnh.shape
  k = k_bkhs.shape[1]
  q_bkxh = q_btnh.reshape(b, t, k, n // k, h).transpose(0, 2, 1, 3, 4).reshape(b, k, -1, h)
  valid_b1xs = jnp.repeat(valid_bts, n // k, axis=1)[:, None]
  logits_bkxs = jnp.einsum("bkxh,bkhs->bkxs", q_bkxh, k_bkhs,
                           preferred_element_type=jnp.float32) * h ** -0.5
  probs_bkxs = _masked_softmax(logits_bkxs, valid_b1xs)
  o_bkxh = jnp.einsum("bkxs,bksh->bkxh", probs_bkxs.astype(v_bksh.dtype), v_bksh,
                      preferred_element_type=jnp.float32)
  o_bktgh = o_bkxh.astype(q_btnh.dtype).reshape(b, k, t, n // k, h)
  return o_bktgh.transpose(0, 2, 1, 3, 4).reshape(b, t, n, h)


def _decode_gda(q_btnh, k_bksh, v_bksh, valid_bts, cfg):
  """GDA's two attends (signal heads on K1, the noise head on K2, both over V1 ‖ V2) for t
  queries per row, on the cache viewed as [b, g, 2, s, h] (a free reshape of the interleaved
  heads): (signal_btgrv, noise_btg1v)."""
  b, t, _, h = q_btnh.shape
  g, r, s = cfg.num_groups, cfg.gda_ratio, k_bksh.shape[2]
  q_bgtrh = q_btnh.reshape(b, t, g, r + 1, h).transpose(0, 2, 1, 3, 4)
  # Pair c = 0 (K1) takes the r signal heads, c = 1 (K2) the noise head, repeated r times so one
  # batched dot serves both; the copies cost r-1 extra query rows, not a cache copy. The t
  # queries ride with the heads (x = t·r rows).
  noise_bgtrh = jnp.broadcast_to(q_bgtrh[:, :, :, r:], (b, g, t, r, h))
  q_bgcxh = jnp.stack([q_bgtrh[:, :, :, :r], noise_bgtrh], 2).reshape(b, g, 2, t * r, h)
  # q·k as a fused multiply-reduce over h rather than a batched dot: with one query row per KV
  # head the dot is a stack of [r, h] x [h, s] products that XLA CPU ran 1.6x slower per decode
  # step (tiny Motif, 128 rows x 384 slots: 0.21 -> 0.13 s, motif_jax/bench/sampler.py shape b).
  f32 = jnp.float32
  k_bgcsh = k_bksh.reshape(b, g, 2, s, h)
  logits_bgcxs = jnp.sum(q_bgcxh[:, :, :, :, None, :].astype(f32) * k_bgcsh[:, :, :, None].astype(
      f32), axis=-1) * h ** -0.5
  valid_b11xs = jnp.repeat(valid_bts, r, axis=1)[:, None, None]
  probs_bgyx = _masked_softmax(logits_bgcxs, valid_b11xs).reshape(b, g, 1, 2 * t * r, s)
  # Each value slab d (V1, V2) gets every probability row: batch axes (b, g, d) lead in both.
  probs_bgdys = jnp.broadcast_to(probs_bgyx, (b, g, 2, 2 * t * r, s)).astype(v_bksh.dtype)
  o_bgdyh = jnp.einsum("bgdys,bgdsh->bgdyh", probs_bgdys, v_bksh.reshape(b, g, 2, s, h),
                       preferred_element_type=jnp.float32).astype(q_btnh.dtype)
  o_bgyv = jnp.concatenate([o_bgdyh[:, :, 0], o_bgdyh[:, :, 1]], axis=-1)  # V1 ‖ V2
  o_bgctrv = o_bgyv.reshape(b, g, 2, t, r, -1)
  signal_btgrv = o_bgctrv[:, :, 0].transpose(0, 2, 1, 3, 4)
  noise_btg1v = o_bgctrv[:, :, 1, :, :1].transpose(0, 2, 1, 3, 4)
  return signal_btgrv, noise_btg1v


def _masked(q_btkgh, k_bskh, v_bskv, *, mask_bts):
  return attend_masked(q_btkgh, k_bskh, v_bskv, mask_bts)


def attention_prefill(x_btd: jax.Array, p: dict, layer: int | jax.Array, cos_bth: jax.Array,
                      sin_bth: jax.Array, k_cache: jax.Array, v_cache_bksh: jax.Array,
                      start: int, cfg: ModelConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
  """A chunk of t prompt tokens at positions start .. start+t-1 of every row (prefill).

  Writes their K/V into cache slots start .. start+t-1 (V [b, k, s, h], K as `k_slots_last`
  says, as `attention_step`) and attends causally to slots 0 .. start+t-1 (earlier chunks plus this
  one): densely for short key ranges, else through the flash kernels with a query offset (O(t)
  memory per row, not O(t·s)). `start` is a Python int, so the key range is static.
  """
  q_btnh, k_btkh, v_btkh = project_qkv(x_btd, p, cos_bth, sin_bth, cfg)
  t = x_btd.shape[1]
  k_block, slot_axis = _k_block(k_btkh, cfg)
  k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k_block.astype(k_cache.dtype), start,
                                                axis=slot_axis)
  v_cache_bksh = jax.lax.dynamic_update_slice_in_dim(
      v_cache_bksh, jnp.swapaxes(v_btkh, 1, 2).astype(v_cache_bksh.dtype), start, axis=2)
  attend_fn = functools.partial(_chunk_attend, start=start, impl=cfg.attention_impl)
  k_bskh = _k_cache_bskh(k_cache, cfg)[:, :start + t]
  o_btnv = _CORES[cfg.attention](q_btnh, k_bskh, jnp.swapaxes(v_cache_bksh[:, :, :start + t], 1, 2),
                                 attend_fn, p, layer, cfg)
  return _output(o_btnv, p, cfg), k_cache, v_cache_bksh


# Prefill chunks whose key range is at most this long use the dense masked core: its [t, s] logits
# are small there, and the blockwise path costs about a second more to compile (CPU, measured).
DENSE_PREFILL_KEYS = 1024


def _chunk_attend(q_btkgh, k_bskh, v_bskv, *, start, impl):
  """Causal attention of queries at start + i to keys at j (the cache prefix)."""
  t, s = q_btkgh.shape[1], k_bskh.shape[1]
  if impl == "reference" or s <= DENSE_PREFILL_KEYS:
    causal_1ts = (start + jnp.arange(t))[None, :, None] >= jnp.arange(s)[None, None, :]
    return attend_masked(q_btkgh, k_bskh, v_bskv, causal_1ts)
  # cuDNN's API has no query offset: "cudnn" prefills long prompts with the blockwise XLA path.
  o_btkgv, _ = fa.flash_attention(q_btkgh, k_bskh, v_bskv, q_offset=start,
                                  impl="pallas" if impl == "pallas" else "xla")
  return o_btkgv
