"""pallas_kernels.flash_attention: Pallas (interpreted) and XLA blockwise paths vs the dense
reference, values and gradients; segment isolation; the model's attention_impl dispatch; memory
shape and Triton lowering for CUDA without a GPU."""

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import random_params, random_tokens, tiny_config
from motif_jax.model import ModelConfig, forward_logits
from motif_jax.model import attention as model_attention
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


@pytest.mark.parametrize("seq_len,group", [(1024, 4), (1000, 1)])
def test_pallas_kernels_lower_to_triton_for_cuda(seq_len, group):
  """Motif shapes (8 KV heads, h = 128, dual-V 256, bf16; group 4 = signal, 1 = noise heads):
  forward and jax.grad lower to Triton custom calls; a Triton lowering error fails here."""
  q, k, v, seg = fa.abstract_inputs(seq_len=seq_len, group=group)
  fwd = _export_for_cuda(lambda q, k, v, s: fa.flash_attention(q, k, v, s, interpret=False),
                         q, k, v, seg)
  assert fwd.mlir_module().count("__gpu$xla.gpu.triton") == 1
  grads = _export_for_cuda(fa.loss_and_grads("pallas", interpret=False), q, k, v, seg)
  assert grads.mlir_module().count("__gpu$xla.gpu.triton") == 3  # forward, dq, dk/dv
  assert [a.shape for a in grads.out_avals[1:]] == [q.shape, k.shape, v.shape]
  # Outside the kernels nothing is [t, t]: no tensor type has two sequence-length dimensions.
  assert not re.search(rf"\b{seq_len}x(\d+x)*{seq_len}x", grads.mlir_module())


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
