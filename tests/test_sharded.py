"""Sharded forward and backward on 8 fake CPU devices equal the single-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from model_helpers import random_params, random_tokens, tiny_config
from motif_jax import sharding as shd
from motif_jax.model import forward_logits, init_params, param_shardings

MESHES = [dict(fsdp=8), dict(fsdp=2, tensor=4), dict(data=2, fsdp=2, tensor=2)]


def _loss(params, tokens_bt, cfg):
  logits_btv = forward_logits(params, tokens_bt, cfg)
  targets_bt = jnp.roll(tokens_bt, -1, axis=1)
  logp_btv = jax.nn.log_softmax(logits_btv, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp_btv, targets_bt[..., None], axis=-1))


_loss_and_grads = jax.jit(jax.value_and_grad(_loss), static_argnums=2)


def _sharded_loss_and_grads(params, tokens, cfg, mesh):
  with jax.set_mesh(mesh):
    p_shardings = param_shardings(cfg, mesh)
    params = jax.device_put(params, p_shardings)
    tokens = jax.device_put(tokens, NamedSharding(mesh, shd.spec_for(("batch", None),
                                                                     cfg.sharding)))
    step = jax.jit(jax.value_and_grad(_loss), static_argnums=2,
                   out_shardings=(NamedSharding(mesh, jax.sharding.PartitionSpec()), p_shardings))
    return step(params, tokens, cfg)


# Motif's gda on every mesh; gqa and diff on the tensor-parallel one (their head layouts differ).
CASES = [("gda", m) for m in MESHES] + [("gqa", MESHES[1]), ("diff", MESHES[1])]


@pytest.mark.parametrize("attention,mesh_shape", CASES,
                         ids=[f"{a}-" + ",".join(f"{k}={v}" for k, v in m.items()) for a, m in CASES])
def test_sharded_forward_and_backward_equal_single_device(attention, mesh_shape):
  cfg = tiny_config(attention)
  params = random_params(cfg)
  tokens = random_tokens(cfg, 8, 16)
  loss_ref, grads_ref = _loss_and_grads(params, tokens, cfg)
  mesh = shd.make_mesh(mesh_shape)
  loss, grads = _sharded_loss_and_grads(params, tokens, cfg, mesh)
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
  wq = grads["layers"]["attn"]["wq"]
  assert wq.sharding.spec == shd.spec_for(("layers", "embed", "heads", "head_dim"), cfg.sharding)
  assert len(wq.addressable_shards) == 8
  for (path, g), g_ref in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                              jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def test_sharded_init_creates_sharded_arrays_with_the_same_values():
  cfg = tiny_config()
  mesh = shd.make_mesh(dict(fsdp=2, tensor=4))
  sharded = init_params(jax.random.key(0), cfg, mesh)
  single = init_params(jax.random.key(0), cfg)
  unembed = sharded["unembed"]
  assert unembed.sharding.spec == shd.spec_for(("embed", "vocab"), cfg.sharding)
  # Each device holds 1/8 of the [d, v] head: created sharded, not replicated.
  assert unembed.addressable_shards[0].data.shape == (cfg.d_model // 2, cfg.vocab_size // 4)
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_params_rejects_a_mesh_that_does_not_divide():
  cfg = tiny_config()  # 20 query heads, 8 kv heads
  mesh = shd.make_mesh(dict(fsdp=1, tensor=8))
  with pytest.raises(ValueError, match=r"model\.num_heads=20 does not divide"):
    init_params(jax.random.key(0), cfg, mesh)
