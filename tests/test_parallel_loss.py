"""Per-shard fused cross-entropy (parallel.loss) against the unsharded full-logits oracle."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from model_helpers import tiny_config
from motif_jax import losses
from motif_jax import sharding as shd
from motif_jax.parallel.loss import sharded_fused_cross_entropy
from pallas_kernels.fused_cross_entropy import BlockSizes, fused_cross_entropy_reference

RULES = shd.ShardingRules()
# d = 24 crosses a partial 16-wide Pallas d tile; each vocab slice (96 / 2 or 96 / 4 columns) spans
# several 16-column chunks and tiles, the last one overlapping; 8-token chunks over 2-16 tokens.
D, V = 24, 96
BS = BlockSizes(chunk_t=8, chunk_v=16, block_t=16, block_v=16, block_d=16)
TEMPERATURE, Z_LOSS = 0.7, 1e-3
# (mesh, batch rows): per device 1-4 rows x 2-8 positions. Batch 3 divides over neither data nor
# fsdp: those axes then repeat the same tokens while the vocab stays split. With fsdp, dW is
# reduce-scattered per 16-column chunk; fsdp=2 x tensor=4 has 24-column slices, so the last
# chunk overlaps its neighbour.
CASES = [(dict(data=2, fsdp=2, tensor=2), 4), (dict(fsdp=2, sequence=2, tensor=2), 4),
         (dict(tensor=4, data=2), 4), (dict(sequence=4, fsdp=2), 4),
         (dict(fsdp=2, tensor=4), 4), (dict(data=2, fsdp=2, tensor=2), 3)]


def _inputs(b, t=8, seed=0):
  k = jax.random.split(jax.random.key(seed), 5)
  h = jax.random.normal(k[0], (b, t, D))
  w = 0.3 * jax.random.normal(k[1], (D, V))
  labels = ((jnp.arange(b * t) * 13 + 5) % V).reshape(b, t)  # spread over every vocab slice
  labels = labels.at[0, 3].set(-100).at[1, 6].set(V + 7)  # ignore index, out of range
  mask = jnp.ones((b, t)).at[0, :2].set(0.0).at[-1, 5].set(0.0)
  return h, w, labels, mask, jax.random.normal(k[3], (b, t)), jax.random.normal(k[4], (b, t))


def _reference(h, w, labels, mask):
  b, t, d = h.shape
  loss, ent = fused_cross_entropy_reference(h.reshape(b * t, d), w, labels.reshape(-1),
                                            mask.reshape(-1), temperature=TEMPERATURE,
                                            z_loss=Z_LOSS)
  return loss.reshape(b, t), ent.reshape(b, t)


def _sharded(h, w, labels, mask, impl):
  return sharded_fused_cross_entropy(h, w, labels, mask, rules=RULES, temperature=TEMPERATURE,
                                     z_loss=Z_LOSS, impl=impl, block_sizes=BS)


def _value_and_grads(loss_fn, h, w, labels, mask, g_loss, g_ent):
  """Outputs and (dh, dW) with cotangents on both the loss and the entropy."""
  def objective(h, w):
    loss, ent = loss_fn(h, w, labels, mask)
    return jnp.sum(loss * g_loss) + jnp.sum(ent * g_ent), (loss, ent)
  (_, (loss, ent)), (dh, dw) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(h, w)
  return loss, ent, dh, dw


def _assert_close(out, ref, tol=1e-5):
  for name, a, b in zip(("loss", "entropy", "dh", "dw"), out, ref):
    scale = max(1.0, float(jnp.abs(b).max()))
    err = float(jnp.abs(a - b).max())
    assert err <= tol * scale, (name, err, scale)


def _on_mesh(mesh_shape, b, impl):
  """Sharded outputs and grads, inputs placed as the model places them; also the jaxpr text."""
  args = _inputs(b)
  mesh = shd.make_mesh(mesh_shape)
  with jax.set_mesh(mesh):
    act = lambda axes: NamedSharding(mesh, shd.activation_spec(axes, RULES, mesh))  # noqa: E731
    w_sharding = NamedSharding(mesh, shd.present_spec(shd.spec_for(("embed", "vocab"), RULES),
                                                      mesh))
    h, w, labels, mask, g_loss, g_ent = args
    placed = (h, jax.device_put(w, w_sharding), labels, mask, g_loss, g_ent)
    if b % 4 == 0:  # batch 3 cannot be placed over data x fsdp; jit gets it replicated
      placed = (jax.device_put(h, act(("batch", "seq", "embed"))), placed[1],
                *(jax.device_put(x, act(("batch", "seq"))) for x in placed[2:]))
    fn = jax.jit(functools.partial(_value_and_grads, functools.partial(_sharded, impl=impl)))
    out = fn(*placed)
    jaxpr = str(jax.make_jaxpr(fn)(*placed))
  return args, out, jaxpr, mesh


_reference_value_and_grads = jax.jit(functools.partial(_value_and_grads, _reference))


@pytest.mark.parametrize("mesh_shape,b", CASES, ids=[
    ",".join(f"{k}={v}" for k, v in m.items()) + f"-b{b}" for m, b in CASES])
def test_sharded_loss_and_grads_match_the_unsharded_reference(mesh_shape, b):
  args, out, jaxpr, mesh = _on_mesh(mesh_shape, b, "xla")
  labels, mask = args[2], args[3]
  tensor = mesh.shape["tensor"]
  live = np.asarray((mask > 0) & (labels >= 0) & (labels < V))
  assert len(set(np.asarray(labels)[live] // (V // tensor))) == tensor  # a label in every slice
  assert "shard_map" in jaxpr  # the per-shard path, not the GSPMD fallback
  _assert_close(out, _reference_value_and_grads(*args))
  loss, ent, dh, dw = out
  assert float(loss[0, 3]) == float(ent[1, 6]) == float(loss[0, 0]) == 0.0  # masked tokens
  if mesh_shape == dict(data=2, fsdp=2, tensor=2) and b == 4:
    # dW leaves reduce-scattered over fsdp: already sharded like the [d, v] parameter.
    assert dw.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec("fsdp", "tensor")), 2)
    assert dh.sharding.is_equivalent_to(
        NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None, None)), 3)


def test_pallas_kernels_per_shard_match_the_reference():
  args, out, jaxpr, _ = _on_mesh(dict(fsdp=2, sequence=2, tensor=2), 2, "pallas")
  assert "shard_map" in jaxpr and "pallas_call" in jaxpr
  _assert_close(out, _reference_value_and_grads(*args))


def test_without_a_mesh_it_is_the_plain_fused_kernel():
  args = _inputs(2)
  fn = jax.jit(functools.partial(_value_and_grads, functools.partial(_sharded, impl="xla")))
  assert "shard_map" not in str(jax.make_jaxpr(fn)(*args))
  _assert_close(fn(*args), _reference_value_and_grads(*args))


def test_a_vocabulary_that_does_not_divide_over_the_vocab_shards_is_an_error():
  h, w, labels, mask, _, _ = _inputs(2)
  with jax.set_mesh(shd.make_mesh(dict(tensor=4, data=2))):
    with pytest.raises(ValueError, match=r"vocab size 90 does not divide over the 4 shards"):
      jax.eval_shape(lambda h, w: _sharded(h, w, labels, mask, "xla"), h, w[:, :90])


def test_losses_use_the_sharded_path_under_a_mesh():
  """`losses` (the entry of sft_loss and the RL log-probs) on a mesh equals its unsharded self."""
  cfg = tiny_config()
  k = jax.random.split(jax.random.key(3), 3)
  params = {"unembed": 0.1 * jax.random.normal(k[0], (cfg.d_model, cfg.vocab_size)),
            "embed": jnp.zeros((cfg.vocab_size, cfg.d_model))}
  hidden = jax.random.normal(k[1], (4, 8, cfg.d_model))
  targets = jax.random.randint(k[2], (4, 8), 0, cfg.vocab_size).at[0, 0].set(-100)
  mask = jnp.ones((4, 8), jnp.int32).at[1, :3].set(0)

  def stats(params, hidden):
    logp, ent = losses.token_logprobs_and_entropy(params, hidden, targets, mask, cfg,
                                                  temperature=0.9, block_sizes=BS)
    total, count = losses.next_token_loss(params, hidden, targets, mask, cfg, z_loss=1e-3,
                                          block_sizes=BS)
    return logp, ent, total, count

  fn = jax.jit(stats)
  ref = fn(params, hidden)
  with jax.set_mesh(shd.make_mesh(dict(data=2, fsdp=2, tensor=2))):
    assert "shard_map" in str(jax.make_jaxpr(stats)(params, hidden))
    out = jax.jit(stats)(params, hidden)
  for a, b in zip(out, ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_compiled_loss_gradient_gathers_no_tokens():
  """AOT loss+grads on a tensor=2 x data=4 mesh at 8 x 1024 tokens, d 256, vocab 32768 (bf16).

  Criterion: the compiled HLO has no all-gather, all-to-all or collective-permute at all. With
  inputs placed as the model places them (tokens over data, vocab over tensor, no fsdp), each
  device already holds what its shard needs; its only collectives are all-reduces of local
  per-token statistics, the local [t, d] dh and the local [d, v/2] dW. The GSPMD path over the
  flat token axis (before this module) all-gathers h to [8192, 256] and W to [256, 32768]
  here: every device computed the LM head for the whole global batch. This checks the op names
  only, not shapes or fusion choices, so it does not depend on how XLA lays out the gathers.
  The temp memory must also stay under a [global tokens, vocab / 2] float32 tile (512 MiB).
  """
  b, t, d, v = 8, 1024, 256, 32768
  mesh = shd.make_mesh(dict(tensor=2, data=4))
  with jax.set_mesh(mesh):
    act = lambda axes: NamedSharding(mesh, shd.activation_spec(axes, RULES, mesh))  # noqa: E731
    specs = (jax.ShapeDtypeStruct((b, t, d), jnp.bfloat16, sharding=act(("batch", "seq", "embed"))),
             jax.ShapeDtypeStruct((d, v), jnp.bfloat16, sharding=NamedSharding(
                 mesh, shd.present_spec(shd.spec_for(("embed", "vocab"), RULES), mesh))),
             jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=act(("batch", "seq"))))

    def loss(h, w, labels):
      l, e = sharded_fused_cross_entropy(h, w, labels, rules=RULES, z_loss=1e-4,
                                         block_sizes=BlockSizes(chunk_t=512, chunk_v=2048))
      return jnp.sum(l) + 0.01 * jnp.sum(e)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*specs).compile()
  hlo = compiled.as_text()
  for op in ("all-gather", "all-to-all", "collective-permute"):
    assert not re.search(rf"\b{op}(-start)?\(", hlo), op
  assert re.search(r"\ball-reduce(-start)?\(", hlo)  # the vocab-slice and dW sums
  assert compiled.memory_analysis().temp_size_in_bytes < b * t * (v // 2) * 4
