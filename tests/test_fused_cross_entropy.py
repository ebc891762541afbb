"""Fused linear cross-entropy: every implementation against the full-logits reference."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import random_params, random_tokens, tiny_config
from motif_jax import losses
from motif_jax.model import forward, forward_logits
from pallas_kernels.fused_cross_entropy import BlockSizes, fused_cross_entropy

# Small tiles so odd shapes cross many tile and chunk boundaries, including overlapping last
# chunks (T=37 over 16-token chunks, V=301 over 64-column chunks and 32-column tiles).
SMALL = BlockSizes(chunk_t=16, chunk_v=64, block_t=16, block_v=32, block_d=16)
# The xla backward is one pass while a float32 dW fits `fused_backward_bytes`, else two passes.
TWO_PASS = dataclasses.replace(SMALL, fused_backward_bytes=0)
# Against the reference on the same (bf16-rounded) inputs in float32, so bf16 cases see only the
# kernels' own rounding: bf16 gradients are within 4 bf16 ulps (2^-6) of the largest value
# (measured 0.26-0.54%); a z-loss gradient off by a factor of 2 is 5-8% off at z_loss=1e-2.
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 2.0 ** -6}


def _inputs(t, d, v, dtype, seed=0):
  k = jax.random.split(jax.random.key(seed), 6)
  h = jax.random.normal(k[0], (t, d)).astype(dtype)
  w = (0.3 * jax.random.normal(k[1], (d, v))).astype(dtype)
  labels = jax.random.randint(k[2], (t,), 0, v).at[3].set(-100)  # an ignore-index label
  mask = (jax.random.uniform(k[3], (t,)) > 0.25).astype(jnp.float32)
  return h, w, labels, mask, jax.random.normal(k[4], (t,)), jax.random.normal(k[5], (t,))


@functools.partial(jax.jit, static_argnames=("impl", "temperature", "z_loss", "bs"))
def _value_and_grads(h, w, labels, mask, g_loss, g_ent, *, impl, temperature, z_loss, bs):
  def objective(h, w):
    loss, ent = fused_cross_entropy(h, w, labels, mask, temperature=temperature, z_loss=z_loss,
                                    impl=impl, block_sizes=bs)
    return jnp.sum(loss * g_loss) + jnp.sum(ent * g_ent), (loss, ent)
  (_, (loss, ent)), (dh, dw) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(h, w)
  return loss, ent, dh, dw


def _check(impl, t, d, v, dtype, *, temperature=1.0, z_loss=0.0, bs=SMALL):
  args = _inputs(t, d, v, dtype)
  args32 = tuple(a.astype(jnp.float32) if a.dtype == jnp.bfloat16 else a for a in args)
  ref = _value_and_grads(*args32, impl="reference", temperature=temperature, z_loss=z_loss,
                         bs=bs)
  out = _value_and_grads(*args, impl=impl, temperature=temperature, z_loss=z_loss, bs=bs)
  for name, a, b in zip(("loss", "entropy", "dh", "dw"), out, ref):
    assert a.dtype == (dtype if name in ("dh", "dw") else jnp.float32), (name, a.dtype)
    scale = max(1.0, float(jnp.abs(b.astype(jnp.float32)).max()))
    err = float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max())
    assert err <= TOL[dtype] * scale, (name, err, scale)
  return out


@pytest.mark.parametrize("impl,bs", [("xla", SMALL), ("xla", TWO_PASS), ("pallas", SMALL)],
                         ids=["xla-one-pass", "xla-two-pass", "pallas"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_matches_reference_with_odd_shapes_masks_temperature_and_z_loss(impl, bs, dtype):
  loss, ent, _, _ = _check(impl, 37, 48, 301, dtype, temperature=0.7, z_loss=1e-2, bs=bs)
  assert float(loss[3]) == 0.0 and float(ent[3]) == 0.0  # label -100 is masked


@pytest.mark.parametrize("impl,bs", [("xla", SMALL), ("xla", TWO_PASS), ("pallas", SMALL)],
                         ids=["xla-one-pass", "xla-two-pass", "pallas"])
def test_single_chunk_and_exact_multiples(impl, bs):
  _check(impl, 5, 16, 40, jnp.float32, bs=dataclasses.replace(bs, chunk_t=64, chunk_v=128))
  _check(impl, 32, 32, 128, jnp.float32, bs=bs)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_all_masked_tokens_give_zero_loss_and_gradients(impl):
  h, w, labels, _, g_loss, g_ent = _inputs(20, 16, 50, jnp.float32)
  loss, ent, dh, dw = _value_and_grads(h, w, labels, jnp.zeros(20), g_loss, g_ent, impl=impl,
                                       temperature=1.0, z_loss=0.0, bs=SMALL)
  for x in (loss, ent, dh, dw):
    assert float(jnp.abs(x).max()) == 0.0


def test_hand_computed_two_token_example():
  """h @ W gives logits [0, ln 3] and [ln 2, ln 2]: loss_0 = ln 4 - ln 3 (label 1),
  loss_1 = ln 4 - ln 2 (label 0); entropies: H([1/4, 3/4]) and ln 2."""
  h = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  w = jnp.array([[0.0, np.log(3.0)], [np.log(2.0), np.log(2.0)]])
  for impl in ("reference", "xla", "pallas"):
    loss, ent = fused_cross_entropy(h, w, jnp.array([1, 0]), impl=impl, block_sizes=SMALL)
    np.testing.assert_allclose(loss, [np.log(4 / 3), np.log(2.0)], rtol=1e-6)
    np.testing.assert_allclose(ent, [-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)), np.log(2.0)],
                               rtol=1e-6)


@pytest.mark.parametrize("fused_backward_bytes", [0, 2**30], ids=["two-pass", "one-pass"])
def test_blockwise_never_builds_the_logits(fused_backward_bytes):
  """AOT memory of loss+grads: the chunked path's temp memory is a small fraction of the
  reference's, whose fp32 [T, V] logits alone are 256 MiB here."""
  t, d, v = 4096, 256, 16384
  specs = (jax.ShapeDtypeStruct((t, d), jnp.bfloat16), jax.ShapeDtypeStruct((d, v), jnp.bfloat16),
           jax.ShapeDtypeStruct((t,), jnp.int32))

  def temp_bytes(impl):
    def loss(h, w, labels):
      return fused_cross_entropy(h, w, labels, impl=impl,
                                 block_sizes=BlockSizes(chunk_t=512, chunk_v=2048,
                                                        fused_backward_bytes=fused_backward_bytes)
                                 )[0].sum()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*specs).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  reference, chunked = temp_bytes("reference"), temp_bytes("xla")
  assert reference > t * v * 4
  assert chunked < reference / 10, (chunked, reference)


def test_pallas_kernels_lower_for_cuda():
  """Triton lowering of the forward and both backward kernels, without a GPU."""
  t, d, v = 1000, 512, 3001

  def loss(h, w, labels, mask):
    l, e = fused_cross_entropy(h, w, labels, mask, impl="pallas", interpret=False,
                               temperature=0.9, z_loss=1e-4)
    return l.sum() + 0.1 * e.sum()

  specs = (jax.ShapeDtypeStruct((t, d), jnp.bfloat16), jax.ShapeDtypeStruct((d, v), jnp.bfloat16),
           jax.ShapeDtypeStruct((t,), jnp.int32), jax.ShapeDtypeStruct((t,), jnp.float32))
  exported = jax.export.export(
      jax.jit(jax.grad(loss, argnums=(0, 1))), platforms=["cuda"],
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*specs)
  assert exported.mlir_module().count("__gpu$xla.gpu.triton") == 3  # fwd, dh, dw


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_compiled_kernels_on_gpu(dtype):
  bs = BlockSizes(chunk_t=256, chunk_v=1024)
  _check("pallas", 300, 256, 5003, dtype, temperature=0.8, z_loss=1e-4, bs=bs)


def test_losses_match_full_logits_on_the_model():
  cfg = tiny_config()
  params = random_params(cfg)
  tokens = random_tokens(cfg, 2, 9)
  targets = jnp.roll(tokens, -1, axis=1).at[:, -1].set(-100)
  mask = jnp.ones_like(tokens).at[0, :3].set(0)
  hidden = jax.jit(forward, static_argnames="cfg")(params, tokens, cfg)
  logits = forward_logits(params, tokens, cfg)
  logp = jax.nn.log_softmax(logits, -1)
  valid = (mask > 0) & (targets >= 0)
  target_logp = jnp.take_along_axis(logp, jnp.clip(targets, 0)[..., None], -1)[..., 0]
  for impl in ("xla", "pallas"):
    total, count = losses.next_token_loss(params, hidden, targets, mask, cfg, impl=impl,
                                          block_sizes=SMALL)
    assert float(count) == float(valid.sum()) == 2 * 8 - 3
    np.testing.assert_allclose(total, -jnp.sum(jnp.where(valid, target_logp, 0.0)), rtol=1e-5)
    logp_bt, ent_bt = losses.token_logprobs_and_entropy(params, hidden, targets, mask, cfg,
                                                        impl=impl, block_sizes=SMALL)
    np.testing.assert_allclose(logp_bt, jnp.where(valid, target_logp, 0.0), atol=1e-5)
    full_ent = -jnp.sum(jnp.exp(logp) * logp, -1)
    np.testing.assert_allclose(ent_bt, jnp.where(valid, full_ent, 0.0), atol=1e-5)
