"""Context parallelism (motif_jax.parallel.context) equals the single-device result.

Packed rows with several segments throughout; meshes shard the sequence 2, 4 or 8 ways, alone or
with fsdp and tensor parallelism.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from model_helpers import random_params, random_tokens, tiny_config
from motif_jax import sharding as shd
from motif_jax.model import param_shardings
from motif_jax.model.transformer import positions_from_segments
from motif_jax.parallel import context
from motif_jax.sft import SFTConfig, sft_loss
from pallas_kernels import flash_attention as fa


def _packed_segments(b: int, t: int) -> jax.Array:
  """Three segments per row with boundaries that do not line up with chunk edges."""
  cuts = np.array([t // 3 + 1, (2 * t) // 3 - 1])
  seg_t = 1 + np.searchsorted(cuts, np.arange(t), side="right")
  return jnp.asarray(np.broadcast_to(seg_t, (b, t)), jnp.int32)


def test_zigzag_balances_causal_work_and_inverts():
  order = context.zigzag_order(32, 4)  # 8 chunks of 4 tokens, 2 per rank
  chunks_per_rank = order.reshape(4, 2, 4)[:, :, 0] // 4
  assert chunks_per_rank.tolist() == [[0, 7], [1, 6], [2, 5], [3, 4]]
  # Causal chunk n attends to n + 1 chunks: every rank does 2S + 1 = 9 chunk pairs.
  assert ((chunks_per_rank + 1).sum(axis=1) == 9).all()
  x = jnp.arange(2 * 32).reshape(2, 32)
  np.testing.assert_array_equal(context.from_zigzag(context.to_zigzag(x, 4), 4), x)
  with pytest.raises(ValueError, match="multiple of 2 x 4"):
    context.zigzag_order(20, 4)


ATTN_MESHES = [dict(sequence=2), dict(fsdp=2, sequence=4), dict(fsdp=2, tensor=2, sequence=2),
               dict(sequence=8)]


def _attention_case_ids(case):
  return case if isinstance(case, str) else ",".join(f"{k}={v}" for k, v in case.items())


ATTN_CASES = ([(m, method, "xla") for m in ATTN_MESHES for method in ("allgather", "ring")] +
              [(dict(sequence=4), method, "pallas") for method in ("allgather", "ring")])


@pytest.mark.parametrize("mesh_shape,method,impl", ATTN_CASES, ids=_attention_case_ids)
def test_context_attention_matches_dense_reference(mesh_shape, method, impl):
  b, t, k, g, h, v = 2, 64, 4, 3, 16, 32
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (b, t, k, g, h))
  kk = jax.random.normal(keys[1], (b, t, k, h))
  vv = jax.random.normal(keys[2], (b, t, k, v))
  do = jax.random.normal(keys[3], (b, t, k, g, v))
  seg = _packed_segments(b, t)

  def ref(q, kk, vv):
    return fa.flash_attention_reference(q, kk, vv, seg, causal=True)[0]

  o_ref, vjp_ref = jax.vjp(ref, q, kk, vv)
  rules = shd.ShardingRules()
  with jax.set_mesh(shd.make_mesh(mesh_shape)):
    n = context.sequence_shards(rules)
    assert n == mesh_shape["sequence"]

    def cp(q, kk, vv):
      z = lambda x: context.to_zigzag(x, n)  # noqa: E731
      o = context.context_attend(z(q), z(kk), z(vv), z(seg), rules=rules, method=method,
                                 impl=impl,
                                 block_sizes=fa.BlockSizes(xla_block_q=4, xla_block_k=8))
      return context.from_zigzag(o, n)

    o, grads = jax.jit(lambda *a: (cp(*a), jax.vjp(cp, *a)[1](do)))(q, kk, vv)
  np.testing.assert_allclose(o, o_ref, atol=2e-6)
  for got, want in zip(grads, vjp_ref(do)):
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=1e-5)


MODEL_MESHES = [(dict(fsdp=2, sequence=4), "allgather"), (dict(tensor=2, sequence=4), "allgather"),
                (dict(sequence=8), "allgather"), (dict(fsdp=2, tensor=2, sequence=2), "allgather"),
                (dict(fsdp=2, sequence=4), "ring"), (dict(tensor=2, sequence=2), "ring")]


def _batch(cfg, b, t):
  tokens = random_tokens(cfg, b, t)
  seg = _packed_segments(b, t)
  return {"tokens": tokens, "targets": jnp.roll(tokens, -1, axis=1), "segment_ids": seg,
          "positions": positions_from_segments(seg),
          "loss_mask": (jnp.arange(t) % 3 != 0).astype(jnp.int32)[None].repeat(b, 0)}


@pytest.mark.parametrize("mesh_shape,method", MODEL_MESHES, ids=lambda m: m if isinstance(
    m, str) else ",".join(f"{k}={v}" for k, v in m.items()))
def test_model_loss_and_grads_with_context_parallelism_equal_single_device(mesh_shape, method):
  # gda attention + PolyNorm (whose RMS spans the tensor-sharded ffw axis) + the fused loss.
  embed = ("fsdp", "sequence") if mesh_shape == dict(sequence=8) else "fsdp"
  cfg = SFTConfig(tiny_config(remat="full", context_parallel=method,
                              sharding=shd.ShardingRules(embed=embed)))
  params = random_params(cfg.model)
  batch = _batch(cfg.model, 2, 32)
  grad_fn = jax.value_and_grad(sft_loss, has_aux=True)
  (loss_ref, _), grads_ref = jax.jit(grad_fn, static_argnums=2)(params, batch, cfg)
  mesh = shd.make_mesh(mesh_shape)
  with jax.set_mesh(mesh):
    p_shardings = param_shardings(cfg.model, mesh)
    batch_sharding = NamedSharding(mesh, shd.spec_for(("batch", None), cfg.model.sharding))
    sharded = jax.jit(grad_fn, static_argnums=2, out_shardings=(
        (NamedSharding(mesh, PartitionSpec()), None), p_shardings))
    (loss, _), grads = sharded(jax.device_put(params, p_shardings),
                               jax.device_put(batch, batch_sharding), cfg)
    lowered = jax.jit(grad_fn, static_argnums=2).lower(params, batch, cfg).as_text()
  if embed != "fsdp":  # sequence=8: the weights, too, are split over the 8 sequence ranks
    assert grads["layers"]["mlp"]["w_up"].addressable_shards[0].data.shape[1] == 128 // 8
  if method == "allgather":  # the K/V gather of shard_map
    assert "all-gather" in lowered or "all_gather" in lowered
  else:  # K/V blocks travel between neighbours
    assert "collective-permute" in lowered or "collective_permute" in lowered
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
  for (path, g), g_ref in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                              jax.tree.leaves(grads_ref)):
    # Gradients of a loss *sum* reach O(1): float32 reordering noise scales with the leaf.
    scale = float(np.abs(np.asarray(g_ref)).max())
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-3, atol=1e-5 * scale,
                               err_msg=jax.tree_util.keystr(path))


def test_weights_can_be_sharded_over_the_sequence_axis_while_activations_are_not():
  rules = shd.ShardingRules(embed=("fsdp", "sequence"))
  assert shd.spec_for(("embed", "ffw"), rules) == PartitionSpec(("fsdp", "sequence"), "tensor")
  act = shd.activation_rules(rules)
  assert act.embed is None and act.seq == ("sequence",)
  assert shd.spec_for(("batch", "seq", "embed"), act) == PartitionSpec(
      ("data", "fsdp"), "sequence", None)
