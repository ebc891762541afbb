"""Per-shard fused cross-entropy: each device, its own tokens against its own vocab slice.

GSPMD cannot partition a `pallas_call` and tends to all-gather the token axis for the chunked
scans of `pallas_kernels.fused_cross_entropy`, so every device would compute the LM head for
every token of the global batch. `sharded_fused_cross_entropy` instead runs the kernels inside a
`shard_map` over the ambient mesh (`jax.set_mesh`):

  tokens   [b, t] split as activations are (`batch` -> data, fsdp; `seq` -> sequence);
  W[d, v]  vocab split as `activation_rules(rules).vocab` (default tensor), all-gathered over
           the other axes (fsdp) on entry, as FSDP does for every weight.

Collectives (V = vocab axes, T = token axes; all on float32):
  forward   pmax + 2 psums of per-token [t_local] vectors over V: with the slice statistics
            (lse_k, z_label_k, entropy_k) of `vocab_slice_stats`,
            lse = logsumexp_k lse_k, z_label = sum_k z_label_k,
            entropy = sum_k exp(lse_k - lse) (entropy_k + lse - lse_k).
  backward  (custom VJP around the shard_map; W gathered again) dz on the local slice from the
            *global* lse/entropy (`vocab_slice_grads`); dh [t_local, d] psum over V; dW
            reduce-scattered over the token axes that also shard W's embed dim (fsdp: the
            FSDP gradient reduce-scatter) and psum over the other token axes. With such scatter
            axes the backward loops over `chunk_v` columns of the local slice, reducing each
            chunk's [d, chunk_v] dW as it goes (the last chunk overlaps its neighbour), so no
            device holds a float32 [d, v_local]; without them it is one call.
            Partial gradients are float32 until reduced, then cast to h's and W's dtype.

A token dimension that does not divide over its mesh axes leaves those axes out (their devices
then repeat the same tokens, correct but redundant); a vocabulary that does not divide over the
vocab axes is an error, as it is for the parameter sharding (`model.validate_sharding`).
Without a mesh, or with nothing split, this is plain `fused_cross_entropy`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec

from motif_jax import sharding as shd
from pallas_kernels import fused_cross_entropy as fce


@dataclasses.dataclass(frozen=True)
class _Plan:
  """Static layout of one call: specs inside the shard_map and the axes each sum runs over."""

  mesh: jax.sharding.AbstractMesh
  h_spec: PartitionSpec  # [b, t, d]: tokens split, d whole
  t_spec: PartitionSpec  # [b, t] labels, mask, per-token statistics
  w_spec: PartitionSpec  # [d, v] in the shard_map: vocab split, d whole
  dw_spec: PartitionSpec  # [d, v] gradient out: d reduce-scattered over `scatter_axes`
  vocab_axes: tuple[str, ...]
  token_axes: tuple[str, ...]
  scatter_axes: tuple[str, ...]
  temperature: float
  z_loss: float
  impl: str
  block_sizes: fce.BlockSizes
  interpret: bool

  def kernel_kw(self):
    return dict(temperature=self.temperature, impl=self.impl, block_sizes=self.block_sizes,
                interpret=self.interpret)


def _axes(part) -> tuple[str, ...]:
  return () if part is None else (part,) if isinstance(part, str) else tuple(part)


def _spec_part(axes: tuple[str, ...]):
  return None if not axes else axes[0] if len(axes) == 1 else axes


def _dividing(part, size: int, mesh) -> tuple[str, ...]:
  """The axes of one spec entry that split a dimension of `size`: size-1 axes dropped, and an
  axis that would leave the dimension indivisible skipped (its devices repeat the work)."""
  kept, shards = [], 1
  for axis in _axes(part):
    n = mesh.shape[axis]
    if n > 1 and size % (shards * n) == 0:
      kept.append(axis)
      shards *= n
  return tuple(kept)


def _plan(shape_btd, vocab, rules, mesh, **kw) -> _Plan | None:
  """The shard_map layout on `mesh`, or None when it splits neither tokens nor vocab."""
  b, t, d = shape_btd
  act_spec = shd.activation_spec(("batch", "seq"), rules, mesh)
  batch_axes = _dividing(act_spec[0], b, mesh)
  seq_axes = _dividing(act_spec[1], t, mesh)
  vocab_part = shd.activation_spec((None, "vocab"), rules, mesh)[1]
  vocab_axes = tuple(a for a in _axes(vocab_part) if mesh.shape[a] > 1)
  shards = int(np.prod([mesh.shape[a] for a in vocab_axes], dtype=np.int64))
  if vocab % shards:
    raise ValueError(f"vocab size {vocab} does not divide over the {shards} shards of mesh axes "
                     f"{vocab_axes} (rules.vocab={rules.vocab!r}); pad the vocabulary")
  token_axes = batch_axes + seq_axes
  if not token_axes and not vocab_axes:
    return None
  # dW's embed dim is reduce-scattered over the token axes that shard it as a parameter (the
  # FSDP axes); the remaining token axes get a psum (dW replicated over them).
  param_embed = shd.present_spec(shd.spec_for(("embed", None), rules), mesh)[0]
  scatter_axes = tuple(a for a in _dividing(param_embed, d, mesh) if a in token_axes)
  t_spec = PartitionSpec(_spec_part(batch_axes), _spec_part(seq_axes))
  return _Plan(mesh=mesh, h_spec=PartitionSpec(*t_spec, None), t_spec=t_spec,
               w_spec=PartitionSpec(None, _spec_part(vocab_axes)),
               dw_spec=PartitionSpec(_spec_part(scatter_axes), _spec_part(vocab_axes)),
               vocab_axes=vocab_axes, token_axes=token_axes, scatter_axes=scatter_axes, **kw)


def _local_labels(labels_bt, v_local, plan):
  """Labels relative to this device's first vocab column (outside [0, v_local): not ours)."""
  labels_t = labels_bt.reshape(-1)
  if not plan.vocab_axes:
    return labels_t
  return labels_t - lax.axis_index(plan.vocab_axes) * v_local


def _combine_slices(lse_t, z_label_t, ent_t, axes):
  """Whole-vocabulary statistics from each vocab slice's (see the module docstring)."""
  lse_max_t = lax.pmax(lse_t, axes)
  sum_t, z_label_t = lax.psum((jnp.exp(lse_t - lse_max_t), z_label_t), axes)
  lse_all_t = lse_max_t + jnp.log(sum_t)
  share_t = jnp.exp(lse_t - lse_all_t)  # this slice's probability mass
  return lse_all_t, z_label_t, lax.psum(share_t * (ent_t + lse_all_t - lse_t), axes)


def _local_forward(h_btd, w_dv, labels_bt, m_bt, *, plan):
  b, t, d = h_btd.shape
  labels_t = _local_labels(labels_bt, w_dv.shape[1], plan)
  stats = fce.vocab_slice_stats(h_btd.reshape(b * t, d), w_dv, labels_t, **plan.kernel_kw())
  if plan.vocab_axes:
    stats = _combine_slices(*stats, plan.vocab_axes)
  lse_t, z_label_t, ent_t = stats
  m_t = m_bt.reshape(-1)
  loss_t = m_t * (lse_t - z_label_t + plan.z_loss * lse_t ** 2)
  return tuple(x.reshape(b, t) for x in (loss_t, m_t * ent_t, lse_t, ent_t))


def _reduce_dw(dw_dv, plan):
  """Sum a float32 dW partial over the token shards: reduce-scatter d over `scatter_axes` (the
  FSDP gradient reduce-scatter), psum over the other token axes."""
  if plan.scatter_axes:  # each token shard contributes h_k^T @ dz_k
    dw_dv = lax.psum_scatter(dw_dv, plan.scatter_axes, scatter_dimension=0, tiled=True)
  rest = tuple(a for a in plan.token_axes if a not in plan.scatter_axes)
  return lax.psum(dw_dv, rest) if rest else dw_dv


def _local_grads(h_btd, w_dv, labels_bt, *stats_bt, plan):
  b, t, d = h_btd.shape
  h_td = h_btd.reshape(b * t, d)
  v_local = w_dv.shape[1]
  labels_t = _local_labels(labels_bt, v_local, plan)
  stats_t = tuple(x.reshape(-1) for x in stats_bt)
  grads = functools.partial(fce.vocab_slice_grads, z_loss=plan.z_loss, out_dtype=jnp.float32,
                            **plan.kernel_kw())
  cv = min(plan.block_sizes.chunk_v, v_local)
  if not plan.scatter_axes or cv == v_local:
    dh_td, dw_dv = grads(h_td, w_dv, labels_t, *stats_t)
    dw_dv = _reduce_dw(dw_dv, plan).astype(w_dv.dtype)
  else:
    # Per vocab chunk, so the float32 dW partial is [d, chunk_v], never [d, v_local]. The last
    # chunk starts at v_local - cv and overlaps its neighbour: its overlap columns are zeroed in
    # W (no dh from them) and keep the neighbour's dW. The gathered W stays whole: gathering it
    # per chunk inside the loop measured no clear gain (AOT planner, Motif-2-12.7B at 64K).
    def chunk_step(j, carry):
      dh_td, dw_dv = carry
      v0 = jnp.minimum(j * cv, v_local - cv)
      w_dc, v0 = lax.optimization_barrier((w_dv, v0))  # see fce._slice: no hoisted f32 copy of W
      w_dc = lax.dynamic_slice_in_dim(w_dc, v0, cv, 1)
      fresh_c = v0 + jnp.arange(cv) >= j * cv
      dh_c, dw_dc = grads(h_td, jnp.where(fresh_c[None, :], w_dc, 0), labels_t - v0, *stats_t)
      dw_dc = _reduce_dw(dw_dc, plan).astype(dw_dv.dtype)
      dw_dc = jnp.where(fresh_c[None, :], dw_dc, lax.dynamic_slice_in_dim(dw_dv, v0, cv, 1))
      return dh_td + dh_c, lax.dynamic_update_slice_in_dim(dw_dv, dw_dc, v0, 1)

    n_scatter = int(np.prod([plan.mesh.shape[a] for a in plan.scatter_axes], dtype=np.int64))
    dh_td, dw_dv = lax.fori_loop(
        0, -(-v_local // cv), chunk_step,
        (jnp.zeros(h_td.shape, jnp.float32), jnp.zeros((d // n_scatter, v_local), w_dv.dtype)))
  if plan.vocab_axes:  # each vocab slice contributes dz_k @ W_k^T
    dh_td = lax.psum(dh_td, plan.vocab_axes)
  return dh_td.astype(h_btd.dtype).reshape(b, t, d), dw_dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sharded(h_btd, w_dv, labels_bt, m_bt, plan: _Plan):
  return _sharded_fwd(h_btd, w_dv, labels_bt, m_bt, plan)[0]


def _sharded_fwd(h_btd, w_dv, labels_bt, m_bt, plan: _Plan):
  t_spec = plan.t_spec
  loss_bt, ent_bt, lse_bt, ent_all_bt = jax.shard_map(
      functools.partial(_local_forward, plan=plan), mesh=plan.mesh,
      in_specs=(plan.h_spec, plan.w_spec, t_spec, t_spec), out_specs=(t_spec,) * 4,
      check_vma=False)(h_btd, w_dv, labels_bt, m_bt)
  return (loss_bt, ent_bt), (h_btd, w_dv, labels_bt, m_bt, lse_bt, ent_all_bt)


def _sharded_bwd(plan: _Plan, residuals, cotangents):
  h_btd, w_dv, labels_bt, m_bt, lse_bt, ent_bt = residuals
  g_loss_bt, g_ent_bt = cotangents
  dh_btd, dw_dv = jax.shard_map(
      functools.partial(_local_grads, plan=plan), mesh=plan.mesh,
      in_specs=(plan.h_spec, plan.w_spec) + (plan.t_spec,) * 6,
      out_specs=(plan.h_spec, plan.dw_spec), check_vma=False)(
          h_btd, w_dv, labels_bt, m_bt, lse_bt, ent_bt, g_loss_bt, g_ent_bt)
  return dh_btd, dw_dv, None, None


_sharded.defvjp(_sharded_fwd, _sharded_bwd)


def sharded_fused_cross_entropy(h_btd: jax.Array, w_dv: jax.Array, labels_bt: jax.Array,
                                mask_bt: jax.Array | None = None, *, rules: shd.ShardingRules,
                                temperature: float = 1.0, z_loss: float = 0.0,
                                impl: str = "xla",
                                block_sizes: fce.BlockSizes = fce.BlockSizes(),
                                interpret: bool | None = None) -> tuple[jax.Array, jax.Array]:
  """`fused_cross_entropy` on [b, t] tokens, split per device over the ambient mesh.

  Same contract: per-token float32 (loss_bt, entropy_bt), zero where masked or where the label is
  outside [0, V); differentiable in h and W. impl="reference" (full logits) is left to GSPMD.
  """
  b, t, d = h_btd.shape
  if w_dv.shape[0] != d or labels_bt.shape != (b, t) or (
      mask_bt is not None and mask_bt.shape != (b, t)):
    raise ValueError(f"expected h[b, t, d], W[d, v], labels and mask [b, t]; got {h_btd.shape=} "
                     f"{w_dv.shape=} {labels_bt.shape=} "
                     f"{None if mask_bt is None else mask_bt.shape}")
  if impl not in fce.IMPLS:
    raise ValueError(f"{impl=} must be one of {fce.IMPLS}")
  if not temperature > 0:
    raise ValueError(f"{temperature=} must be positive")
  mesh = jax.sharding.get_abstract_mesh()
  plan = None
  if not mesh.empty and impl != "reference":
    plan = _plan(h_btd.shape, w_dv.shape[1], rules, mesh, temperature=float(temperature),
                 z_loss=float(z_loss), impl=impl, block_sizes=block_sizes,
                 interpret=fce.default_interpret() if interpret is None else interpret)
  if plan is None:
    loss_t, ent_t = fce.fused_cross_entropy(
        h_btd.reshape(b * t, d), w_dv, labels_bt.reshape(b * t),
        None if mask_bt is None else mask_bt.reshape(b * t), temperature=temperature,
        z_loss=z_loss, impl=impl, block_sizes=block_sizes, interpret=interpret)
    return loss_t.reshape(b, t), ent_t.reshape(b, t)
  m_bt, labels_bt = fce.effective_mask(labels_bt, mask_bt, w_dv.shape[1])
  return _sharded(h_btd, w_dv, labels_bt.astype(jnp.int32), m_bt, plan)
