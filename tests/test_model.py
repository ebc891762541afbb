"""The decoder: an independent transcription of Motif GDA, causality, packing, scan and remat."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import motif2_12b
from model_helpers import random_params, random_tokens, tiny_config
from motif_jax.model import (ModelConfig, abstract_params, count_params, decode_embeddings,
                             forward, forward_logits, init_params, param_specs,
                             positions_from_segments)


_forward = jax.jit(forward, static_argnames="cfg")


def test_motif2_12b_parameter_count_from_recipe_shapes():
  """Recipe §1.1–1.2 shapes (PyTorch [out, in]) summed by hand: 12,703,860,896."""
  d, layers, vocab, f = 4096, 40, 219_520, 16_384
  per_layer = (5120 * d + 2048 * d + 2048 * d + d * 8192  # q, k, v, o projections
               + 4 * 128 + 256  # lambda_q1/k1/q2/k2, subln
               + 3 * f * d + 3 + 1  # gate, up, down; PolyNorm weight [3] and bias [1]
               + 2 * d)  # input_layernorm, post_attention_layernorm
  expected = layers * per_layer + 2 * vocab * d + d  # untied embed + lm_head, final norm
  assert expected == 12_703_860_896
  cfg = ModelConfig.from_config_dict(motif2_12b.get_config().model)
  assert count_params(param_specs(cfg)) == expected
  assert count_params(abstract_params(cfg)) == expected  # eval_shape: nothing allocated


def test_abstract_params_match_initialized_params():
  cfg = tiny_config()
  abstract = abstract_params(cfg)
  params = init_params(jax.random.key(0), cfg)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(
      lambda a: (a.shape, a.dtype), params)
  assert params["layers"]["attn"]["lambda_q1"].dtype == jnp.float32


# ---- An independent float64 transcription of recipe §1.3 (GDA) and §1.4 (PolyNorm) ----------

def _np_rms(x, w, eps):
  y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
  return y if w is None else y * w


def _np_rope(x_tnh, theta):
  t, _, h = x_tnh.shape
  inv_freq = 1.0 / theta ** (np.arange(0, h, 2) / h)
  ang = np.arange(t)[:, None] * inv_freq[None, :]
  cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
  rot = np.concatenate([-x_tnh[..., h // 2:], x_tnh[..., : h // 2]], -1)
  return x_tnh * cos[:, None] + rot * sin[:, None]


def _np_causal_softmax(scores_ts):
  t = scores_ts.shape[0]
  scores_ts = np.where(np.tril(np.ones((t, t), bool)), scores_ts, -np.inf)
  e = np.exp(scores_ts - scores_ts.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_gda(x_td, p, layer, cfg):
  """Steps 1-9 of recipe §1.3, one head at a time."""
  h, r = cfg.head_dim, cfg.gda_ratio
  q = _np_rope(np.einsum("td,dnh->tnh", x_td, p["wq"]), cfg.rope_theta)
  k = _np_rope(np.einsum("td,dnh->tnh", x_td, p["wk"]), cfg.rope_theta)
  v = np.einsum("td,dnh->tnh", x_td, p["wv"])
  lam_init = 0.8 - 0.6 * np.exp(-0.3 * (layer - 1))  # 0-based layer index
  lam = (np.exp(np.sum(p["lambda_q1"] * p["lambda_k1"])) -
         np.exp(np.sum(p["lambda_q2"] * p["lambda_k2"])) + lam_init)
  scale = h ** -0.5
  heads = []
  for j in range(cfg.num_kv_heads // 2 * r):  # signal heads, group-major
    g = j // r
    q1, q2 = q[:, g * (r + 1) + j % r], q[:, g * (r + 1) + r]  # stripe: 4 signal, then noise
    k1, k2 = k[:, 2 * g], k[:, 2 * g + 1]  # interleaved pairs: even K1, odd K2
    v12 = np.concatenate([v[:, 2 * g], v[:, 2 * g + 1]], -1)  # dual-V, width 2h
    o1 = _np_causal_softmax(scale * q1 @ k1.T) @ v12
    o2 = _np_causal_softmax(scale * q2 @ k2.T) @ v12
    o = _np_rms(o1 - lam * o2, p["subln"], cfg.attn_rms_norm_eps) * (1 - lam_init)
    heads.append(o)
  return np.concatenate(heads, -1) @ p["wo"].reshape(-1, x_td.shape[-1])


def _np_polynorm_mlp(x_td, p, eps):
  gate, up = x_td @ p["w_gate"], x_td @ p["w_up"]
  w, b = p["poly_w"], p["poly_b"]
  act = (w[0] * _np_rms(gate ** 3, None, eps) + w[1] * _np_rms(gate ** 2, None, eps) +
         w[2] * _np_rms(gate, None, eps) + b[0])
  return (act * up) @ p["w_down"]


def _np_forward(params, tokens_t, cfg):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = p["embed"][tokens_t]
  for layer in range(cfg.num_layers):
    lp = jax.tree.map(lambda a, i=layer: a[i], p["layers"])
    x = x + _np_gda(_np_rms(x, lp["attn_norm"], cfg.rms_norm_eps), lp["attn"], layer, cfg)
    x = x + _np_polynorm_mlp(_np_rms(x, lp["mlp_norm"], cfg.rms_norm_eps), lp["mlp"],
                             cfg.polynorm_eps)
  return _np_rms(x, p["final_norm"], cfg.rms_norm_eps)


def test_gda_polynorm_forward_matches_step_by_step_transcription():
  cfg = tiny_config()
  params = random_params(cfg)
  tokens = random_tokens(cfg, 2, 12)
  ours = np.asarray(_forward(params, tokens, cfg))
  for row in range(2):
    expected = _np_forward(params, np.asarray(tokens[row]), cfg)
    np.testing.assert_allclose(ours[row], expected, rtol=2e-4, atol=2e-4)


# ---- Invariants --------------------------------------------------------------------------------

@pytest.mark.parametrize("attention", ["gqa", "diff", "gda"])
def test_causality_future_inputs_get_exactly_zero_gradient(attention):
  cfg = tiny_config(attention)
  params = random_params(cfg)
  t_len = 10
  x_btd = jax.random.normal(jax.random.key(3), (1, t_len, cfg.d_model))
  grad_fn = jax.jit(jax.grad(lambda x, t: decode_embeddings(params, x, cfg)[0, t].sum()))
  for t in (0, 4, t_len - 1):
    grad = grad_fn(x_btd, t)
    per_position = np.abs(np.asarray(grad[0])).sum(-1)
    assert np.all(per_position[t + 1:] == 0.0), (t, per_position)
    assert np.all(per_position[: t + 1] > 0.0), (t, per_position)


def test_positions_restart_at_each_segment():
  seg = jnp.array([[1, 1, 1, 2, 2, 3, 3, 3, 3, 0, 0]])
  np.testing.assert_array_equal(positions_from_segments(seg)[0],
                                [0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 1])


@pytest.mark.parametrize("attention", ["gqa", "diff", "gda"])
def test_packed_row_equals_each_segment_alone(attention):
  cfg = tiny_config(attention)
  params = random_params(cfg)
  lengths = (5, 4, 7)
  tokens = random_tokens(cfg, 1, sum(lengths))
  segment_ids = jnp.concatenate([jnp.full((1, n), i + 1, jnp.int32) for i, n in enumerate(lengths)],
                                axis=1)
  packed = np.asarray(_forward(params, tokens, cfg, segment_ids=segment_ids))
  unpacked = np.asarray(_forward(params, tokens, cfg))
  start = 0
  for n in lengths:
    alone = np.asarray(_forward(params, tokens[:, start:start + n], cfg))
    np.testing.assert_allclose(packed[:, start:start + n], alone, rtol=1e-5, atol=1e-5)
    start += n
  # Without segment ids the later segments see earlier tokens: the check above is not vacuous.
  assert np.abs(unpacked[:, lengths[0]:] - packed[:, lengths[0]:]).max() > 1e-3


def _loss_and_grads(params, tokens, cfg):
  @jax.jit
  def loss(p):
    logits = forward_logits(p, tokens, cfg)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])
  return jax.jit(jax.value_and_grad(loss))(params)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("attention", ["gqa", "gda"])
def test_scan_equals_unrolled(attention):
  cfg = tiny_config(attention, scan_layers=True)
  params = random_params(cfg)
  tokens = random_tokens(cfg, 2, 8)
  loss_scan, grads_scan = _loss_and_grads(params, tokens, cfg)
  loss_loop, grads_loop = _loss_and_grads(params, tokens,
                                          dataclasses.replace(cfg, scan_layers=False))
  np.testing.assert_allclose(loss_scan, loss_loop, rtol=1e-6)
  _assert_trees_close(grads_scan, grads_loop)


@pytest.mark.parametrize("remat", ["full", "dots", "attn_out", "qkv_attn_out", "offload"])
def test_remat_policy_equals_no_remat(remat):
  cfg = tiny_config(remat="none")
  params = random_params(cfg)
  tokens = random_tokens(cfg, 2, 8)
  loss_ref, grads_ref = _loss_and_grads(params, tokens, cfg)
  loss_remat, grads_remat = _loss_and_grads(params, tokens, dataclasses.replace(cfg, remat=remat))
  np.testing.assert_allclose(loss_ref, loss_remat, rtol=1e-6)
  _assert_trees_close(grads_ref, grads_remat)


def test_bfloat16_compute_tracks_float32():
  """bf16 logits are about 1% (RMS) off the f32 ones here (8-bit mantissas through two layers):
  bounded at 3%, and nonzero, so a bf16 setting that is ignored fails. Which ops run in which
  dtype (a norm in bf16 changes this figure too little to see) is test_wiring's jaxpr check."""
  cfg = tiny_config()
  params = random_params(cfg)
  tokens = random_tokens(cfg, 2, 8)
  ref = np.asarray(forward_logits(params, tokens, cfg))
  low = forward_logits(params, tokens, dataclasses.replace(cfg, dtype="bfloat16"))
  assert low.dtype == jnp.float32  # logits are always float32
  rel_rms = np.sqrt(np.mean((np.asarray(low) - ref) ** 2) / np.mean(ref ** 2))
  assert 2e-3 < rel_rms < 3e-2, rel_rms
  assert np.abs(np.asarray(low) - ref).max() < 0.04 * np.abs(ref).max()


@pytest.mark.parametrize("contract", [1, 2])
def test_dense_flat_dot_equals_tensordot_on_one_device_and_on_a_mesh(contract):
  """`layers.dense` (2-D backward dots on one device, plain autodiff under a mesh) is x's last
  `contract` dims times w's first ones: values and both gradients."""
  from motif_jax import sharding as shd
  from motif_jax.model import layers
  kx, kw, ky = jax.random.split(jax.random.key(contract), 3)
  x = jax.random.normal(kx, (2, 4, 3, 5) if contract == 2 else (2, 4, 3))
  w = jax.random.normal(kw, (3, 5, 6) if contract == 2 else (3, 6))
  dy = jax.random.normal(ky, (2, 4, 6))

  def vjp(f):
    y, pullback = jax.vjp(f, x, w)
    return (y, *pullback(dy))
  want = vjp(lambda x, w: jnp.tensordot(x, w, axes=contract))
  run = lambda: vjp(lambda x, w: layers.dense(x, w, contract))  # noqa: E731
  assert shd.single_device()
  devices = jax.devices()
  assert len(devices) >= 2, "conftest sets 8 host devices"
  with shd.use_mesh(shd.make_mesh({"data": 2}, devices[:2])):
    assert not shd.single_device()
    on_mesh = jax.jit(run)()
  for got in (jax.jit(run)(), on_mesh):
    for g, r in zip(got, want):
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
