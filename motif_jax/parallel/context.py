"""Context parallelism over the `sequence` mesh axis: all-gathered K/V, zig-zag chunk order.

Each sequence rank holds 2 of the 2S equal chunks of every row, chunk r and chunk 2S-1-r
("zig-zag"): under a causal mask chunk n sees n+1 chunks of keys, so every rank attends to
(r+1) + (2S-r) = 2S+1 chunks, the same work on all ranks. `decode_embeddings` permutes tokens,
segment ids and RoPE positions into that order once per forward pass (`to_zigzag`) and back at
the end (`from_zigzag`); everything between is per-token except attention.

Attention (`context_attend`) all-gathers K, V and the segment ids over the sequence axis inside a
`shard_map` and runs the blockwise flash path (`pallas_kernels.blockwise_attention`) for each
local query chunk against the whole key range, with the chunk's global start as the causal offset
(the key loop stops at the diagonal). Its backward is the hand-written blockwise one; the K/V
gradients go back through the transpose of the all-gather, a reduce-scatter.

Why all-gather rather than a ring (ppermute of K/V blocks): the traffic is the same, (S-1)/S of
the K/V per layer either way, and K/V is small beside the queries: 16 KV heads x 128 for GDA
is 8 KiB per token (bf16, K and V), so a 64K-token row gathers 512 MiB per layer on every rank,
transient and recomputed under remat. The memory planner (`experiments.memory_plan`) prices it
into the AOT temp figure. A ring would hide the transfer behind compute but needs S partial
softmax merges and a second ring in the backward pass; on one NVLink node the gather is not the
bottleneck. A ring remains the upgrade if multi-node sequence sharding is needed.

Other attention impls ("pallas", "cudnn", "reference") take this XLA blockwise path when the
sequence axis is sharded: the Pallas kernel has no causal offset yet.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from motif_jax import sharding as shd
from pallas_kernels import blockwise_attention as bw
from pallas_kernels.flash_attention import BlockSizes


def sequence_axes(rules: shd.ShardingRules) -> tuple[str, ...]:
  """Mesh axes of the ambient mesh (`jax.set_mesh`) that shard activations' sequence axis."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return ()
  seq = shd.activation_rules(rules).mesh_axes("seq")
  return tuple(a for a in seq if a in mesh.axis_names and mesh.shape[a] > 1)


def sequence_shards(rules: shd.ShardingRules) -> int:
  mesh = jax.sharding.get_abstract_mesh()
  return int(np.prod([mesh.shape[a] for a in sequence_axes(rules)], dtype=np.int64))


def zigzag_order(t: int, shards: int) -> np.ndarray:
  """Natural token index at each position of the zig-zag layout (rank r: chunks r, 2S-1-r)."""
  if t % (2 * shards):
    raise ValueError(f"sequence length {t} must be a multiple of 2 x {shards} sequence shards "
                     f"(zig-zag context parallelism)")
  c = t // (2 * shards)
  chunks = [n for r in range(shards) for n in (r, 2 * shards - 1 - r)]
  return np.concatenate([np.arange(n * c, (n + 1) * c) for n in chunks])


def to_zigzag(x_bt: jax.Array, shards: int) -> jax.Array:
  return jnp.take(x_bt, zigzag_order(x_bt.shape[1], shards), axis=1)


def from_zigzag(x_bt: jax.Array, shards: int) -> jax.Array:
  return jnp.take(x_bt, np.argsort(zigzag_order(x_bt.shape[1], shards)), axis=1)


@dataclasses.dataclass(frozen=True)
class _Options:
  sm_scale: float
  block_q: int
  block_k: int


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _chunk_attention(q, k, v, seg_q, seg_k, offset, opts: _Options):
  return _chunk_fwd(q, k, v, seg_q, seg_k, offset, opts)[0]


def _chunk_fwd(q, k, v, seg_q, seg_k, offset, opts: _Options):
  o, lse = bw.blockwise_forward(q, k, v, seg_q, causal=True, sm_scale=opts.sm_scale,
                                block_q=opts.block_q, block_k=opts.block_k, q_offset=offset,
                                seg_k_bs=seg_k)
  return o, (q, k, v, seg_q, seg_k, offset, o, lse)


def _chunk_bwd(opts: _Options, res, do):
  q, k, v, seg_q, seg_k, offset, o, lse = res
  delta_bkgt = jnp.einsum("btkgv,btkgv->bkgt", o.astype(jnp.float32), do.astype(jnp.float32))
  dq, dk, dv = bw.blockwise_backward(q, k, v, seg_q, lse, do.astype(q.dtype), delta_bkgt,
                                     causal=True, sm_scale=opts.sm_scale, block_q=opts.block_q,
                                     block_k=opts.block_k, q_offset=offset, seg_k_bs=seg_k)
  return dq, dk, dv, None, None, None


_chunk_attention.defvjp(_chunk_fwd, _chunk_bwd)


def _local_attend(q_btkgh, k_bskh, v_bskv, seg_bt, *, axes, shards, opts):
  """One rank: local zig-zag queries [chunk r ‖ chunk 2S-1-r] against all keys."""
  c = q_btkgh.shape[1] // 2
  # The gathered rank-major blocks are the global zig-zag layout; put keys in natural order.
  natural = np.argsort(zigzag_order(2 * c * shards, shards))
  gather = lambda x: jnp.take(lax.all_gather(x, axes, axis=1, tiled=True), natural, axis=1)  # noqa: E731
  k_all, v_all, seg_all = gather(k_bskh), gather(v_bskv), gather(seg_bt)
  r = lax.axis_index(axes)
  outs = []
  for slot, chunk in enumerate((r, 2 * shards - 1 - r)):
    part = slice(slot * c, (slot + 1) * c)
    outs.append(_chunk_attention(q_btkgh[:, part], k_all, v_all, seg_bt[:, part], seg_all,
                                 (chunk * c).astype(jnp.int32), opts))
  return jnp.concatenate(outs, axis=1)


def context_attend(q_btkgh: jax.Array, k_bskh: jax.Array, v_bskv: jax.Array,
                   segment_ids_bt: jax.Array, *, rules: shd.ShardingRules,
                   block_sizes: BlockSizes = BlockSizes()) -> jax.Array:
  """Causal, segment-masked attention of zig-zag-ordered rows sharded over the sequence axis.

  Same contract as `model.attention.attend` (o_btkgv), for inputs in `to_zigzag` order.
  """
  mesh = jax.sharding.get_abstract_mesh()
  axes = sequence_axes(rules)
  shards = sequence_shards(rules)
  q_spec = shd.activation_spec(("batch", "seq", "kv_heads", None, None), rules, mesh)
  kv_spec = shd.activation_spec(("batch", "seq", "kv_heads", None), rules, mesh)
  seg_spec = shd.activation_spec(("batch", "seq"), rules, mesh)
  opts = _Options(sm_scale=float(q_btkgh.shape[-1] ** -0.5), block_q=block_sizes.xla_block_q,
                  block_k=block_sizes.xla_block_k)
  local = functools.partial(_local_attend, axes=axes if len(axes) > 1 else axes[0],
                            shards=shards, opts=opts)
  return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                       out_specs=q_spec, check_vma=False)(
                           q_btkgh, k_bskh, v_bskv, segment_ids_bt.astype(jnp.int32))
