"""Decoder-only transformer as pure functions over the parameter tree of `params.py`.

Dimension letters, used in names and einsums throughout `motif_jax`:
  b batch, t query sequence, s key sequence, d model width, n query heads, k kv heads,
  h head dim, v value width / vocab (by context), f ffw width, l layers, g heads per kv head.

Layers are stacked on a leading axis and run with `lax.scan` (`cfg.scan_layers`); the unrolled
Python loop is kept as a test oracle. Remat wraps one layer with a named policy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from motif_jax import sharding as shd
from motif_jax.model import layers
from motif_jax.model.attention import attention
from motif_jax.model.config import ModelConfig
from motif_jax.parallel import context

_policies = jax.checkpoint_policies
# "none" means no jax.checkpoint at all; the others name what a layer keeps for the backward pass.
REMAT_POLICIES = {
    "full": _policies.nothing_saveable,
    "dots": _policies.dots_with_no_batch_dims_saveable,
    "attn_out": _policies.save_only_these_names("attn_out"),
    "qkv_attn_out": _policies.save_only_these_names(
        "query_proj", "key_proj", "value_proj", "attn_out"),
    # qkv_attn_out's tensors kept in host memory (pinned_host) instead of device memory: the
    # backward fetches them back instead of recomputing them. XLA moves them on GPU and TPU; the
    # CPU backend lowers the policy but keeps them in device memory (checked: same gradients).
    "offload": _policies.save_and_offload_only_these_names(
        names_which_can_be_saved=(),
        names_which_can_be_offloaded=("query_proj", "key_proj", "value_proj", "attn_out"),
        offload_src="device", offload_dst="pinned_host"),
}


def positions_from_segments(segment_ids_bt: jax.Array) -> jax.Array:
  """Positions that restart at 0 at every segment boundary of a packed row."""
  t = segment_ids_bt.shape[1]
  idx_bt = jnp.broadcast_to(jnp.arange(t), segment_ids_bt.shape)
  is_start_bt = jnp.concatenate(
      [jnp.ones_like(segment_ids_bt[:, :1], bool),
       segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]], axis=1)
  start_bt = jax.lax.cummax(jnp.where(is_start_bt, idx_bt, 0), axis=1)
  return idx_bt - start_bt


def block(x_btd: jax.Array, p: dict, layer: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array,
          segment_ids_bt: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(.))."""
  h_btd = layers.rms_norm(x_btd, p["attn_norm"], cfg.rms_norm_eps)
  x_btd = x_btd + attention(h_btd, p["attn"], layer, cos_bth, sin_bth, segment_ids_bt, cfg)
  h_btd = layers.rms_norm(x_btd, p["mlp_norm"], cfg.rms_norm_eps)
  x_btd = x_btd + layers.mlp(h_btd, p["mlp"], cfg)
  x_btd = shd.constrain(x_btd, ("batch", "seq", "embed"), cfg.sharding)
  return checkpoint_name(x_btd, "block_out")


def apply_layers(x_btd: jax.Array, stacked: dict, cos_bth: jax.Array, sin_bth: jax.Array,
                 segment_ids_bt: jax.Array, cfg: ModelConfig) -> jax.Array:
  """All blocks over layer-stacked params, scanned or unrolled, with the configured remat."""
  def body(x_btd, layer_params_and_index):
    p, layer = layer_params_and_index
    return block(x_btd, p, layer, cos_bth, sin_bth, segment_ids_bt, cfg), None

  unroll = min(cfg.scan_unroll, cfg.num_layers)
  if cfg.remat != "none":
    # Inside a rolled scan XLA cannot CSE the recomputation with the forward; unrolled it can.
    body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat],
                          prevent_cse=not cfg.scan_layers or unroll > 1)
  layer_ids = jnp.arange(cfg.num_layers)
  if cfg.scan_layers:
    x_btd, _ = jax.lax.scan(body, x_btd, (stacked, layer_ids), unroll=unroll)
    return x_btd
  for i in range(cfg.num_layers):
    x_btd, _ = body(x_btd, (jax.tree.map(lambda a: a[i], stacked), layer_ids[i]))
  return x_btd


def decode_embeddings(params: dict, x_btd: jax.Array, cfg: ModelConfig, *,
                      segment_ids: jax.Array | None = None,
                      positions: jax.Array | None = None) -> jax.Array:
  """The decoder stack and final norm applied to input embeddings x_btd."""
  b, t, _ = x_btd.shape
  if segment_ids is None:
    segment_ids = jnp.ones((b, t), jnp.int32)
  if positions is None:
    positions = positions_from_segments(segment_ids)
  shards = context.sequence_shards(cfg.sharding)
  if shards > 1:
    # Context parallelism: rows in zig-zag chunk order (causal load balance), undone at the end.
    x_btd, segment_ids, positions = (context.to_zigzag(a, shards)
                                     for a in (x_btd, segment_ids, positions))
  x_btd = shd.constrain(x_btd.astype(cfg.dtype), ("batch", "seq", "embed"), cfg.sharding)
  cos_bth, sin_bth = layers.rope_tables(positions, cfg.head_dim, cfg.rope_theta)
  x_btd = apply_layers(x_btd, params["layers"], cos_bth, sin_bth, segment_ids, cfg)
  x_btd = layers.rms_norm(x_btd, params["final_norm"], cfg.rms_norm_eps)
  if shards > 1:
    x_btd = shd.constrain(context.from_zigzag(x_btd, shards), ("batch", "seq", "embed"),
                          cfg.sharding)
  return x_btd


def embed(params: dict, tokens_bt: jax.Array, cfg: ModelConfig) -> jax.Array:
  # Gather from a table sharded on vocab only: each shard looks up its own rows and the partial
  # results are summed, instead of GSPMD replicating the table (it cannot reshard the gather).
  table_vd = shd.constrain(params["embed"], ("vocab", None), cfg.sharding)
  x_btd = jnp.take(table_vd, tokens_bt, axis=0).astype(cfg.dtype)
  return shd.constrain(x_btd, ("batch", "seq", "embed"), cfg.sharding)


def forward(params: dict, tokens_bt: jax.Array, cfg: ModelConfig, *,
            segment_ids: jax.Array | None = None,
            positions: jax.Array | None = None) -> jax.Array:
  """Token ids [b, t] -> final hidden states [b, t, d] (after the final norm).

  segment_ids: [b, t] ints; tokens attend only within their segment (packing). Default: one
    segment per row. positions: [b, t] RoPE positions; default restarts at each segment.
  """
  return decode_embeddings(params, embed(params, tokens_bt, cfg), cfg,
                           segment_ids=segment_ids, positions=positions)


def unembed_matrix(params: dict, cfg: ModelConfig) -> jax.Array:
  """The [d, v] output head (the transposed embedding when tied)."""
  return params["embed"].T if cfg.tie_embeddings else params["unembed"]


def logits(params: dict, hidden_btd: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Full-vocabulary float32 logits [b, t, v]. Training losses use the fused kernels instead."""
  w_dv = unembed_matrix(params, cfg).astype(cfg.dtype)
  logits_btv = jnp.einsum("btd,dv->btv", hidden_btd.astype(cfg.dtype), w_dv,
                          preferred_element_type=jnp.float32)
  return shd.constrain(logits_btv, ("batch", "seq", "vocab"), cfg.sharding)


@functools.partial(jax.jit, static_argnames=("cfg",))
def forward_logits(params: dict, tokens_bt: jax.Array, cfg: ModelConfig, *,
                   segment_ids: jax.Array | None = None,
                   positions: jax.Array | None = None) -> jax.Array:
  """Jitted convenience for evaluation and parity checks: tokens -> float32 logits."""
  hidden_btd = forward(params, tokens_bt, cfg, segment_ids=segment_ids, positions=positions)
  return logits(params, hidden_btd, cfg)
