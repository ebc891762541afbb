"""pallas_kernels.flash_attention: Pallas (interpreted) and XLA blockwise paths vs the dense
reference, values and gradients; segment isolation; query chunks against longer key ranges at a
causal offset (context parallelism); the model's attention_impl dispatch; memory shape and Triton
lowering for CUDA without a GPU."""

import dataclasses
import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import random_params, random_tokens, tiny_config
from motif_jax.model import ModelConfig, forward_logits
from motif_jax.model import attention as model_attention
from pallas_kernels import blockwise_attention as bw
from pallas_kernels import flash_attention as fa

# 16-token tiles: the short test sequences span several tiles with a ragged last one.
SMALL = fa.BlockSizes(block_q=16, block_k=16, block_q_dkv=16, block_k_dkv=16, block_q_dq=16,
                      block_k_dq=16, xla_block_q=16, xla_block_k=16)
# Max error relative to the reference's largest magnitude (bf16: 8 mantissa bits, and the
# backward feeds bf16 probabilities to its matmuls).
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _inputs(b, t, k, g, h, v, dtype, seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  return (jax.random.normal(keys[0], (b, t, k, g, h), dtype),
          jax.random.normal(keys[1], (b, t, k, h), dtype),
          jax.random.normal(keys[2], (b, t, k, v), dtype),
          jax.random.normal(keys[3], (b, t, k, g, v), jnp.float32),  # o cotangent
          jax.random.normal(keys[4], (b, t, k, g), jnp.float32))  # lse cotangent


def _segments(b, t, bounds):
  """Row r: ids 0, 1, ... that change at `bounds` (shifted by r, so rows differ)."""
  pos = jnp.arange(t)
  return jnp.stack([sum((pos >= x + r).astype(jnp.int32) for x in bounds) for r in range(b)])


def _value_and_grads(impl, causal, block_sizes=SMALL):
  def loss(q, k, v, seg, do, dlse):
    if impl == "reference":
      o, lse = fa.flash_attention_reference(q, k, v, seg, causal=causal)
    else:
      o, lse = fa.flash_attention(q, k, v, seg, causal=causal, impl=impl,
                                  block_sizes=block_sizes)
    return jnp.sum(o.astype(jnp.float32) * do) + jnp.sum(lse * dlse), (o, lse)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _max_rel_err(x, ref):
  x, ref = np.asarray(x, np.float32), np.asarray(ref, np.float32)
  return float(np.abs(x - ref).max() / np.abs(ref).max())


CASES = {
    # name: (b, t, k, g, h, v, dtype, segment bounds or None, causal)
    "gqa3_dualv_odd37_segments": (1, 37, 2, 3, 16, 32, jnp.float32, (10, 29), True),
    "gqa5_v_eq_h_noncausal_batch2": (2, 50, 1, 5, 32, 32, jnp.float32, None, False),
    "bf16_gqa4_dualv_segments": (2, 37, 2, 4, 32, 64, jnp.bfloat16, (20,), True),
}


@pytest.mark.parametrize("impl", ["pallas", "xla"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_values_and_grads(impl, case):
  b, t, k, g, h, v, dtype, bounds, causal = CASES[case]
  q, k_, v_, do, dlse = _inputs(b, t, k, g, h, v, dtype)
  seg = None if bounds is None else _segments(b, t, bounds)
  (_, (o, lse)), grads = _value_and_grads(impl, causal)(q, k_, v_, seg, do, dlse)
  (_, (o_ref, lse_ref)), grads_ref = _value_and_grads("reference", causal)(q, k_, v_, seg, do,
                                                                          dlse)
  assert o.shape == (b, t, k, g, v) and o.dtype == dtype
  assert lse.shape == (b, t, k, g) and lse.dtype == jnp.float32
  errors = {"o": _max_rel_err(o, o_ref), "lse": _max_rel_err(lse, lse_ref)}
  errors.update({name: _max_rel_err(x, r) for name, x, r in zip(("dq", "dk", "dv"), grads,
                                                                 grads_ref)})
  assert max(errors.values()) < TOL[dtype], errors


@pytest.mark.parametrize("impl", ["pallas", "xla"])
def test_no_attention_across_segments(impl):
  """Perturbing segment 1 changes nothing in segment 2 (non-causal: 2 could see 1 otherwise),
  and a loss on segment 2 has exactly zero gradient w.r.t. segment 1's keys and values."""
  b, t, k, g, h, v = 1, 40, 1, 2, 16, 32
  seg = _segments(b, t, (13, 27))  # ids 0 | 1 | 2, boundaries inside 16-token tiles
  in1, in2 = np.asarray(seg[0]) == 1, np.asarray(seg[0]) == 2
  q, k_, v_, _, _ = _inputs(b, t, k, g, h, v, jnp.float32)

  def attend(q, k, v):
    return fa.flash_attention(q, k, v, seg, causal=False, impl=impl, block_sizes=SMALL)[0]

  noise = jnp.asarray(in1)[None, :, None] * 5.0
  o = np.asarray(jax.jit(attend)(q, k_, v_))
  o_pert = np.asarray(jax.jit(attend)(q + noise[..., None, None], k_ + noise[..., None],
                                      v_ + noise[..., None]))
  np.testing.assert_array_equal(o_pert[:, in2], o[:, in2])
  assert np.abs(o_pert[:, in1] - o[:, in1]).min() > 1e-3  # the perturbation is not vacuous
  o_ref, _ = fa.flash_attention_reference(q, k_, v_, seg, causal=False)
  assert _max_rel_err(o, o_ref) < TOL[jnp.float32]
  dk, dv = jax.jit(jax.grad(lambda k, v: jnp.sum(attend(q, k, v)[:, in2]), argnums=(0, 1)))(k_,
                                                                                          v_)
  assert np.all(np.asarray(dk)[:, in1] == 0) and np.all(np.asarray(dv)[:, in1] == 0)
  assert np.abs(np.asarray(dv)[:, in2]).min() > 0


def test_shape_errors_name_the_offending_values():
  q, k, v, _, _ = _inputs(1, 8, 2, 2, 16, 32, jnp.float32)
  with pytest.raises(ValueError, match="k/v must be"):
    fa.flash_attention(q, k[:, :, :1], v, impl="xla")
  with pytest.raises(ValueError, match="head_dim >= 16, got 8"):
    fa.flash_attention(q[..., :8], k[..., :8], v, impl="pallas")
  with pytest.raises(ValueError, match="block_sizes.block_q=24"):
    fa.flash_attention(q, k, v, impl="pallas", block_sizes=fa.BlockSizes(block_q=24))
  with pytest.raises(ValueError, match="segment_ids.shape"):
    fa.flash_attention(q, k, v, jnp.zeros((1, 7), jnp.int32), impl="xla")
  seg = jnp.zeros((1, 8), jnp.int32)
  k2, v2 = jnp.concatenate([k, k], axis=1), jnp.concatenate([v, v], axis=1)  # s = 16 != t = 8
  with pytest.raises(ValueError, match=r"s=16, t=8.*segment_ids_k"):
    fa.flash_attention(q, k2, v2, seg, impl="xla")
  with pytest.raises(ValueError, match=r"segment_ids_k \(shape \(1, 8\)\) must be .* \(1, 16\)"):
    fa.flash_attention(q, k2, v2, seg, segment_ids_k=seg, impl="xla")
  with pytest.raises(ValueError, match=r"q_offset must be an integer scalar, got shape \(1,\)"):
    fa.flash_attention(q, k2, v2, q_offset=jnp.zeros((1,), jnp.int32), impl="xla")
  with pytest.raises(ValueError, match="q_offset must be an integer scalar.*float32"):
    fa.flash_attention(q, k2, v2, q_offset=jnp.float32(1.0), impl="xla")


# ---- A query chunk against a longer key range at a causal offset (context parallelism) --------

def _chunk_vjp(impl, block_sizes=SMALL):
  """jit(q, k, v, seg_q, seg_k, q_offset, do, dlse) -> (o, lse, dq, dk, dv); q_offset is traced."""
  def run(q, k, v, seg_q, seg_k, q_offset, do, dlse):
    def attend(q, k, v):
      if impl == "reference":
        return fa.flash_attention_reference(q, k, v, seg_q, q_offset=q_offset,
                                            segment_ids_k=seg_k)
      return fa.flash_attention(q, k, v, seg_q, q_offset=q_offset, segment_ids_k=seg_k,
                                impl=impl, block_sizes=block_sizes)
    (o, lse), vjp = jax.vjp(attend, q, k, v)
    return (o, lse, *vjp((do.astype(o.dtype), dlse)))
  return jax.jit(run)


def _chunk_case(offset, *, b=2, t=24, s=80, k=2, g=2, h=16, v=32, absent_row=3):
  """Queries at positions offset + i over s keys in segments cut at (30, 61) (shifted per row);
  each query takes the segment of its (clipped) position, except `absent_row`, whose id no key
  has: a row masked by segments alone, whose key loop visits only masked tiles."""
  q, _, _, do, dlse = _inputs(b, t, k, g, h, v, jnp.float32, seed=1)
  _, k_, v_, _, _ = _inputs(b, s, k, g, h, v, jnp.float32, seed=2)
  seg_k = _segments(b, s, (30, 61))
  seg_q = jnp.take(seg_k, jnp.clip(offset + jnp.arange(t), 0, s - 1), axis=1)
  seg_q = seg_q.at[:, absent_row].set(7)
  return q, k_, v_, seg_q, seg_k, jnp.int32(offset), do, dlse


# Query chunk of 24 rows against 80 keys: from the start, inside, partly before the first key
# (rows 0..19 see nothing; with 16-row tiles, tile 0 visits no key tile), running past the last
# key, wholly past it (every key of the segment).
CHUNK_OFFSETS = (0, 37, -20, 70, 100)


def _check_chunk(got, want, offset, *, t=24, absent_row=3):
  """Values and grads match; rows that see no key: o = 0, lse = MASK_VALUE, dq = 0, no NaN."""
  o, lse, dq, dk, dv = (np.asarray(x) for x in got)
  o_ref, lse_ref, dq_ref, dk_ref, dv_ref = (np.asarray(x) for x in want)
  masked = (offset + np.arange(t) < 0) | (np.arange(t) == absent_row)
  mask_value = np.float32(bw.MASK_VALUE)
  np.testing.assert_array_equal(lse_ref[:, masked], mask_value)  # the oracle agrees
  np.testing.assert_array_equal(lse[:, masked], mask_value)
  np.testing.assert_array_equal(o[:, masked], 0.0)
  np.testing.assert_array_equal(dq[:, masked], 0.0)
  assert all(np.isfinite(x).all() for x in (o, lse, dq, dk, dv))
  errors = {"o": _max_rel_err(o, o_ref), "lse": _max_rel_err(lse[:, ~masked], lse_ref[:, ~masked]),
            "dq": _max_rel_err(dq, dq_ref), "dk": _max_rel_err(dk, dk_ref),
            "dv": _max_rel_err(dv, dv_ref)}
  assert max(errors.values()) < TOL[jnp.float32], (offset, errors)


@pytest.mark.parametrize("impl", ["pallas", "xla"])
def test_query_chunk_with_offset_matches_reference(impl):
  """s = 80 keys > t = 24 queries, packed segments, offsets 0 / inside / negative / past s."""
  run, ref = _chunk_vjp(impl), _chunk_vjp("reference")
  for offset in CHUNK_OFFSETS:
    case = _chunk_case(offset)
    _check_chunk(run(*case), ref(*case), offset)
  assert run._cache_size() == 1  # the offset is traced: one compile for all five


@pytest.mark.parametrize("impl", ["pallas", "xla"])
def test_traced_q_offset_one_executable_serves_two_offsets(impl):
  case = _chunk_case(0, b=1, t=16, s=48, absent_row=5)
  args = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in case]
  compiled = _chunk_vjp(impl).lower(*args).compile()  # offset abstract: no value baked in
  ref = _chunk_vjp("reference")
  for offset in (8, 29):
    case = _chunk_case(offset, b=1, t=16, s=48, absent_row=5)
    _check_chunk(compiled(*case), ref(*case), offset, t=16, absent_row=5)


@pytest.mark.parametrize("impl", ["pallas", "xla"])
def test_query_chunks_with_offsets_reproduce_full_causal_attention(impl):
  """Causal attention of 48 packed tokens == its query chunks [0, 16) [16, 36) [36, 48), each
  against the keys up to its end at offset = its start, concatenated: values and grads."""
  b, t, k, g, h, v = 2, 48, 2, 2, 16, 32
  q, k_, v_, do, dlse = _inputs(b, t, k, g, h, v, jnp.float32, seed=3)
  seg = _segments(b, t, (13, 30))
  bounds = (0, 16, 36, 48)

  def chunked(q, k, v):
    outs = [fa.flash_attention(q[:, lo:hi], k[:, :hi], v[:, :hi], seg[:, lo:hi],
                               q_offset=lo, segment_ids_k=seg[:, :hi], impl=impl,
                               block_sizes=SMALL)
            for lo, hi in itertools.pairwise(bounds)]
    return tuple(jnp.concatenate(parts, axis=1) for parts in zip(*outs))

  def full(q, k, v):
    return fa.flash_attention_reference(q, k, v, seg, causal=True)

  def vjp(f):
    (o, lse), pullback = jax.vjp(f, q, k_, v_)
    return (o, lse, *pullback((do, dlse)))

  got, want = jax.jit(lambda: vjp(chunked))(), jax.jit(lambda: vjp(full))()
  for name, x, r in zip(("o", "lse", "dq", "dk", "dv"), got, want):
    assert x.shape == r.shape and _max_rel_err(x, r) < TOL[jnp.float32], name


# ---- The model's attention_impl dispatch ------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _model_loss_and_grads(cfg: ModelConfig):
  params = random_params(cfg)
  tokens = random_tokens(cfg, 2, 21)
  segment_ids = _segments(2, 21, (9,))  # each row: two packed segments

  def loss(p):
    logits = forward_logits(p, tokens, cfg, segment_ids=segment_ids)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("impl", ["pallas", "xla"])
@pytest.mark.parametrize("attention", ["gqa", "diff", "gda"])
def test_model_attention_impl_matches_reference(attention, impl):
  base = tiny_config(attention, num_layers=1)
  loss_ref, grads_ref = _model_loss_and_grads(dataclasses.replace(base,
                                                                  attention_impl="reference"))
  loss, grads = _model_loss_and_grads(dataclasses.replace(base, attention_impl=impl))
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                          jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("t", [40, 300])
def test_model_xla_core_with_default_tiles_matches_the_dense_reference(t):
  """The model's "xla" core at the default 128-token tiles, inside one tile and over three
  (ragged last), two packed segments: values and gradients equal the dense reference."""
  q, k, v, do, _ = _inputs(1, t, 1, 2, 16, 16, jnp.float32, seed=t)
  seg = _segments(1, t, (t // 3,))
  attend_xla = functools.partial(model_attention.attend_flash, impl="xla")

  def vjp(f):
    o, pullback = jax.vjp(lambda q, k, v: f(q, k, v, seg), q, k, v)
    return (o, *pullback(do))

  got, want = jax.jit(lambda: vjp(attend_xla))(), jax.jit(lambda: vjp(model_attention.attend))()
  for name, x, r in zip(("o", "dq", "dk", "dv"), got, want):
    assert _max_rel_err(x, r) < TOL[jnp.float32], name


def test_dot_product_wrapper_splits_dual_v_and_masks_segments():
  """The cudnn path's wrapper (V1/V2 slabs, segment mask) run through jax.nn's XLA backend."""
  q, k, v, _, _ = _inputs(2, 19, 2, 3, 16, 32, jnp.float32)
  seg = _segments(2, 19, (7,))
  ours = jax.jit(functools.partial(model_attention.attend_dot_product, implementation="xla"))
  np.testing.assert_allclose(ours(q, k, v, seg), jax.jit(model_attention.attend)(q, k, v, seg),
                             rtol=1e-5, atol=1e-5)


def test_cudnn_impl_requires_half_precision():
  with pytest.raises(ValueError, match="attention_impl='cudnn' needs model.dtype"):
    tiny_config("gqa", attention_impl="cudnn", dtype="float32")
  tiny_config("gqa", attention_impl="cudnn", dtype="bfloat16")


# ---- Memory shape and GPU readiness without a GPU ---------------------------------------------

def _temp_bytes(impl, seq_len):
  args = fa.abstract_inputs(seq_len=seq_len, kv_heads=2, group=2, head_dim=32, value_dim=64)
  compiled = jax.jit(fa.loss_and_grads(impl)).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_blockwise_memory_is_linear_in_sequence_length():
  """AOT temp bytes of forward + backward double with the sequence; the dense oracle's grow 4x.
  (The Pallas path's CUDA program is checked for [t, t] tensors in the lowering test.)"""
  assert _temp_bytes("xla", 4096) / _temp_bytes("xla", 2048) < 2.2
  assert _temp_bytes("reference", 4096) / _temp_bytes("reference", 2048) > 3.5


def _export_for_cuda(f, *args):
  return jax.export.export(jax.jit(f), platforms=["cuda"], disabled_checks=[
      jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*args)


@pytest.mark.parametrize("seq_len,kv_seq_len,group", [(1024, None, 4), (1000, None, 1),
                                                     (512, 1000, 4)])
def test_pallas_kernels_lower_to_triton_for_cuda(seq_len, kv_seq_len, group):
  """Motif shapes (8 KV heads, h = 128, dual-V 256, bf16; group 4 = signal, 1 = noise heads):
  forward and jax.grad lower to Triton custom calls; a Triton lowering error fails here.
  With kv_seq_len: a query chunk against longer keys at a traced offset (context parallelism)."""
  q, k, v, seg = fa.abstract_inputs(seq_len=seq_len, group=group, kv_seq_len=kv_seq_len)
  chunk = () if kv_seq_len is None else (jax.ShapeDtypeStruct((), jnp.int32),
                                         jax.ShapeDtypeStruct((1, kv_seq_len), jnp.int32))

  def fwd_fn(q, k, v, s, *chunk):
    return fa.flash_attention(q, k, v, s, **dict(zip(("q_offset", "segment_ids_k"), chunk)),
                              interpret=False)

  fwd = _export_for_cuda(fwd_fn, q, k, v, seg, *chunk)
  assert fwd.mlir_module().count("__gpu$xla.gpu.triton") == 1
  grads = _export_for_cuda(fa.loss_and_grads("pallas", interpret=False), q, k, v, seg, *chunk)
  assert grads.mlir_module().count("__gpu$xla.gpu.triton") == 3  # forward, dq, dk/dv
  assert [a.shape for a in grads.out_avals[1:]] == [q.shape, k.shape, v.shape]
  # Outside the kernels nothing is [t, s]: no tensor type has two sequence-length dimensions.
  lens = f"(?:{seq_len}|{kv_seq_len or seq_len})"
  assert not re.search(rf"\b{lens}x(\d+x)*{lens}x", grads.mlir_module())


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["pallas", "xla"])
def test_compiled_kernels_match_reference_on_gpu(impl):
  b, t, k, g, h, v = 2, 300, 2, 4, 128, 256
  q, k_, v_, do, dlse = _inputs(b, t, k, g, h, v, jnp.bfloat16)
  seg = _segments(b, t, (100, 190))
  (_, (o, lse)), grads = _value_and_grads(impl, True, fa.BlockSizes())(q, k_, v_, seg, do, dlse)
  (_, (o_ref, lse_ref)), grads_ref = _value_and_grads("reference", True)(q, k_, v_, seg, do, dlse)
  for x, r in zip((o, lse, *grads), (o_ref, lse_ref, *grads_ref)):
    assert _max_rel_err(x, r) < TOL[jnp.bfloat16]


@pytest.mark.gpu
def test_cudnn_wrapper_matches_reference_on_gpu():
  q, k, v, _, _ = _inputs(2, 256, 2, 4, 128, 256, jnp.bfloat16)
  seg = _segments(2, 256, (100,))
  ours = model_attention.attend_dot_product(q, k, v, seg, implementation="cudnn")
  assert _max_rel_err(ours, model_attention.attend(q, k, v, seg)) < TOL[jnp.bfloat16]
