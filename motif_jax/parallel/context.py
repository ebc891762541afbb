"""Context parallelism over the `sequence` mesh axis: all-gathered K/V or a K/V ring, zig-zag.

Each sequence rank holds 2 of the 2S equal chunks of every row, chunk r and chunk 2S-1-r
("zig-zag"): under a causal mask chunk n sees n+1 chunks of keys, so every rank attends to
(r+1) + (2S-r) = 2S+1 chunks, the same work on all ranks. `decode_embeddings` permutes tokens,
segment ids and RoPE positions into that order once per forward pass (`to_zigzag`) and back at
the end (`from_zigzag`); everything between is per-token except attention.

Both methods run inside a `shard_map` and are built from one unit, a (query chunk, key range)
pair of `pallas_kernels.flash_attention` with the chunk's causal offset (the Pallas kernels for
`impl="pallas"`, the XLA blockwise loops otherwise; the gather differentiates through
`flash_attention`'s own VJP, the ring drives its passes with `attention_passes`):

  "allgather"  all-gather K, V and segment ids over the sequence axis, attend each local query
               chunk to the whole key range (the key loop stops at the diagonal); the K/V
               gradients go back through the transpose of the gather, a reduce-scatter.
  "ring"       S steps; at each, attend the local chunks to the K/V block held, merge the
               partial (o, lse) in float32, and `ppermute` the block to the next rank (the
               transfer is independent of the step's compute, so XLA can overlap them). The
               backward is a second ring: each block's float32 dK/dV travel with it and take
               one more hop home; dq accumulates locally from the final lse.

Which one, measured (2026-11-23, CPU AOT, Motif GDA shapes, bf16; `python -m
experiments.bench_context` and `python -m experiments.memory_plan ... --config.model.
context_parallel=...`): one attention call forward + backward at S=65,536 over 8 ranks takes
3.25 GiB of temp per device with the gather and 1.77 GiB with the ring (0.54x; 0.94x over 4
ranks); the ring receives 1.43x the bytes (its float32 gradient hops); CPU time at a small shape
was equal within noise (0.98x-1.30x over three runs). The whole 12.7B SFT step (full remat) per
device: 52.82 (gather) vs 49.19 GiB (ring) at 64K on sequence=8, 31.45 vs 31.53 on sequence=16,
72.25 vs 64.67 at 128K on sequence=8. Memory is the constraint at these lengths and the extra
0.9 GB per layer is ~2 ms of NVLink beside ~70 ms of attention compute, so the default
(`model.context_parallel`) is the ring; the gather stays selectable.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from motif_jax import sharding as shd
from pallas_kernels import flash_attention as fa
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
  impl: str  # flash attention impl of each (query chunk, key range) pair: xla | pallas
  sm_scale: float
  block_sizes: BlockSizes
  interpret: bool | None


# ---- All-gather: every rank gathers the whole K/V once per layer ------------------------------

def _allgather_attend(q_btkgh, k_bskh, v_bskv, seg_bt, *, axes, shards, opts):
  """One rank: local zig-zag queries [chunk r ‖ chunk 2S-1-r] against all keys."""
  c = q_btkgh.shape[1] // 2
  # The gathered rank-major blocks are the global zig-zag layout; put keys in natural order.
  natural = np.argsort(zigzag_order(2 * c * shards, shards))

  def gather(x):
    return jnp.take(lax.all_gather(x, axes, axis=1, tiled=True), natural, axis=1)

  k_all, v_all, seg_all = gather(k_bskh), gather(v_bskv), gather(seg_bt)
  r = lax.axis_index(axes)
  outs = []
  for slot, chunk in enumerate((r, 2 * shards - 1 - r)):
    part = slice(slot * c, (slot + 1) * c)
    o, _ = fa.flash_attention(q_btkgh[:, part], k_all, v_all, seg_bt[:, part],
                              q_offset=(chunk * c).astype(jnp.int32), segment_ids_k=seg_all,
                              sm_scale=opts.sm_scale, impl=opts.impl,
                              block_sizes=opts.block_sizes, interpret=opts.interpret)
    outs.append(o)
  return jnp.concatenate(outs, axis=1)


# ---- Ring: K/V blocks travel around the sequence ranks, partial softmaxes merge ---------------

def _passes(opts: _Options):
  """forward(q, k, v, seg_q, seg_k, offset) -> (o, lse_bkgt) and backward(..., lse_bkgt, do,
  delta_bkgt) -> (dq, dk, dv) of one (query chunk, key block) pair, apart."""
  return fa.attention_passes(impl=opts.impl, sm_scale=opts.sm_scale,
                             block_sizes=opts.block_sizes, interpret=opts.interpret)


def _delta(o, do):
  return jnp.einsum("btkgv,btkgv->bkgt", o.astype(jnp.float32), do.astype(jnp.float32))


def _merge(o_acc, lse_acc, o_part, lse_part):
  """Merge two softmax-normalized partial results over disjoint keys (float32 o, lse_bkgt).

  Rows that have seen no key yet carry lse = -inf (or the kernels' very negative finite mask
  value) and o = 0; they stay that way until a key arrives.
  """
  m = jnp.maximum(lse_acc, lse_part)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  w_acc, w_part = jnp.exp(lse_acc - m), jnp.exp(lse_part - m)
  total = w_acc + w_part
  lse = m + jnp.log(total)
  safe_total = jnp.where(total == 0.0, 1.0, total)

  def scale(w_bkgt):  # -> [b, t, k, g, 1], to weigh o_btkgv
    return jnp.transpose(w_bkgt / safe_total, (0, 3, 1, 2))[..., None]

  return o_acc * scale(w_acc) + o_part.astype(jnp.float32) * scale(w_part), lse


def _ring_pairs(r, step, shards):
  """(query slot, key slot, query chunk, key chunk) of rank r at ring step `step`."""
  src = lax.rem(r - step + shards, shards)
  q_chunks, k_chunks = (r, 2 * shards - 1 - r), (src, 2 * shards - 1 - src)
  return [(a, b, q_chunks[a], k_chunks[b]) for a in range(2) for b in range(2)]


def _halves(x, axis=1):
  c = x.shape[axis] // 2
  return lax.slice_in_dim(x, 0, c, axis=axis), lax.slice_in_dim(x, c, 2 * c, axis=axis)


def _ring_forward(q, k, v, seg, *, axes, shards, opts):
  pair_forward, _ = _passes(opts)
  r = lax.axis_index(axes)
  c = q.shape[1] // 2
  perm = [(i, (i + 1) % shards) for i in range(shards)]
  qs, segs_q = _halves(q), _halves(seg)
  b, _, kh, g, _ = q.shape
  o0 = jnp.zeros((b, c, kh, g, v.shape[-1]), jnp.float32)
  lse0 = jnp.full((b, kh, g, c), -jnp.inf, jnp.float32)

  def compute(step, kv, acc):
    k_blk, v_blk, seg_blk = kv
    ks, vs, segs_k = _halves(k_blk), _halves(v_blk), _halves(seg_blk)
    acc = list(acc)
    for a, bb, qc, kc in _ring_pairs(r, step, shards):
      o_p, lse_p = pair_forward(qs[a], ks[bb], vs[bb], segs_q[a], segs_k[bb],
                                ((qc - kc) * c).astype(jnp.int32))
      acc[a] = _merge(*acc[a], o_p, lse_p)
    return tuple(acc)

  def body(carry, step):
    kv, acc = carry
    acc = compute(step, kv, acc)
    kv = tuple(lax.ppermute(x, axes, perm) for x in kv)  # overlaps the next step's compute
    return (kv, acc), None

  (kv, acc), _ = lax.scan(body, ((k, v, seg), ((o0, lse0), (o0, lse0))), jnp.arange(shards - 1))
  acc = compute(shards - 1, kv, acc)
  o = jnp.concatenate([acc[0][0], acc[1][0]], axis=1).astype(q.dtype)
  lse = jnp.concatenate([acc[0][1], acc[1][1]], axis=3)
  return o, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _ring_attention(q, k, v, seg, axes, shards, opts: _Options):
  return _ring_forward(q, k, v, seg, axes=axes, shards=shards, opts=opts)[0]


def _ring_fwd(q, k, v, seg, axes, shards, opts: _Options):
  o, lse = _ring_forward(q, k, v, seg, axes=axes, shards=shards, opts=opts)
  return o, (q, k, v, seg, o, lse)


def _ring_bwd(axes, shards, opts: _Options, res, do):
  """A second ring: K/V travel again, each block's float32 dK/dV travel with it and arrive home
  after the last step; dq accumulates locally. Uses the final lse, so no partial rescaling."""
  q, k, v, seg, o, lse = res
  _, pair_backward = _passes(opts)
  r = lax.axis_index(axes)
  c = q.shape[1] // 2
  perm = [(i, (i + 1) % shards) for i in range(shards)]
  qs, dos, segs_q = _halves(q), _halves(do), _halves(seg)
  lses = _halves(lse, axis=3)
  deltas = _halves(_delta(o, do), axis=3)

  def compute(step, kv, grads):
    k_blk, v_blk, seg_blk = kv
    dq, dk, dv = grads
    ks, vs, segs_k = _halves(k_blk), _halves(v_blk), _halves(seg_blk)
    dq, dk, dv = list(_halves(dq)), list(_halves(dk)), list(_halves(dv))
    for a, bb, qc, kc in _ring_pairs(r, step, shards):
      dq_p, dk_p, dv_p = pair_backward(qs[a], ks[bb], vs[bb], segs_q[a], segs_k[bb],
                                       ((qc - kc) * c).astype(jnp.int32), lses[a], dos[a],
                                       deltas[a])
      dq[a] = dq[a] + dq_p.astype(jnp.float32)
      dk[bb] = dk[bb] + dk_p.astype(jnp.float32)
      dv[bb] = dv[bb] + dv_p.astype(jnp.float32)
    cat = lambda xs: jnp.concatenate(xs, axis=1)  # noqa: E731
    return cat(dq), cat(dk), cat(dv)

  def body(carry, step):
    kv, grads = carry
    dq, dk, dv = compute(step, kv, grads)
    kv, (dk, dv) = (tuple(lax.ppermute(x, axes, perm) for x in xs) for xs in (kv, (dk, dv)))
    return (kv, (dq, dk, dv)), None

  zeros = lambda x: jnp.zeros(x.shape, jnp.float32)  # noqa: E731
  (kv, grads), _ = lax.scan(body, ((k, v, seg), (zeros(q), zeros(k), zeros(v))),
                            jnp.arange(shards - 1))
  dq, dk, dv = compute(shards - 1, kv, grads)
  dk, dv = (lax.ppermute(x, axes, perm) for x in (dk, dv))  # the last hop brings them home
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_ring_attention.defvjp(_ring_fwd, _ring_bwd)


def _ring_attend(q_btkgh, k_bskh, v_bskv, seg_bt, *, axes, shards, opts):
  return _ring_attention(q_btkgh, k_bskh, v_bskv, seg_bt, axes, shards, opts)


METHODS = {"allgather": _allgather_attend, "ring": _ring_attend}


def context_attend(q_btkgh: jax.Array, k_bskh: jax.Array, v_bskv: jax.Array,
                   segment_ids_bt: jax.Array, *, rules: shd.ShardingRules,
                   method: str = "ring", impl: str = "xla",
                   block_sizes: BlockSizes = BlockSizes(),
                   interpret: bool | None = None) -> jax.Array:
  """Causal, segment-masked attention of zig-zag-ordered rows sharded over the sequence axis.

  Same contract as `model.attention.attend` (o_btkgv), for inputs in `to_zigzag` order.
  method: "ring" (ppermute K/V blocks) or "allgather" (gather K/V once per layer).
  impl: the flash attention of each (query chunk, key range) pair: "pallas" (Triton kernels)
  or "xla" (blockwise); the model's other impls ("cudnn", "reference") use "xla" here.
  """
  if method not in METHODS:
    raise ValueError(f"context parallel {method=} must be one of {tuple(METHODS)}")
  impl = impl if impl == "pallas" else "xla"
  fa.check_inputs(q_btkgh, k_bskh, v_bskv, segment_ids_bt, None, None, impl, block_sizes)
  mesh = jax.sharding.get_abstract_mesh()
  axes = sequence_axes(rules)
  shards = sequence_shards(rules)
  q_spec = shd.activation_spec(("batch", "seq", "kv_heads", None, None), rules, mesh)
  kv_spec = shd.activation_spec(("batch", "seq", "kv_heads", None), rules, mesh)
  seg_spec = shd.activation_spec(("batch", "seq"), rules, mesh)
  opts = _Options(impl=impl, sm_scale=float(q_btkgh.shape[-1] ** -0.5), block_sizes=block_sizes,
                  interpret=interpret)
  local = functools.partial(METHODS[method], axes=axes if len(axes) > 1 else axes[0],
                            shards=shards, opts=opts)
  return jax.shard_map(local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
                       out_specs=q_spec, check_vma=False)(
                           q_btkgh, k_bskh, v_bskv, segment_ids_bt.astype(jnp.int32))
