"""Sharded forward and backward on 8 fake CPU devices equal the single-device result, and the real
step's layout (params, gradients, Adam moments, collectives) matches a hand-written table."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from model_helpers import random_params, random_tokens, tiny_config
from motif_jax import optim, trainer
from motif_jax import sharding as shd
from motif_jax.model import abstract_params, forward_logits, init_params, param_shardings
from motif_jax.sft import SFTConfig, accumulate_gradients, sft_step
from motif_jax.train_state import init_train_state

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


# ---- The real step's layout on (fsdp=2, tensor=4) ------------------------------------------------
# Values are equal under any layout (GSPMD's guarantee, no shard_map here), so the layout itself
# is checked: each leaf's PartitionSpec and per-device shape, written out by hand for tiny:smoke
# (L=2, d=128, 20 query heads, 16 output heads of width 64, 8 kv heads, h=32, f=256, vocab 512).

_REP = (None, None)
LAYOUT = {  # leaf path: (spec with trailing Nones, per-device shard shape)
    "embed": (("tensor", "fsdp"), (128, 64)),
    "unembed": (("fsdp", "tensor"), (64, 128)),
    "final_norm": (("fsdp",), (64,)),
    "layers/attn_norm": ((None, "fsdp"), (2, 64)),
    "layers/mlp_norm": ((None, "fsdp"), (2, 64)),
    "layers/attn/wq": ((None, "fsdp", "tensor", None), (2, 64, 5, 32)),
    "layers/attn/wk": ((None, "fsdp", "tensor", None), (2, 64, 2, 32)),
    "layers/attn/wv": ((None, "fsdp", "tensor", None), (2, 64, 2, 32)),
    "layers/attn/wo": ((None, "tensor", None, "fsdp"), (2, 4, 64, 64)),
    "layers/attn/lambda_q1": (_REP, (2, 32)),
    "layers/attn/lambda_k1": (_REP, (2, 32)),
    "layers/attn/lambda_q2": (_REP, (2, 32)),
    "layers/attn/lambda_k2": (_REP, (2, 32)),
    "layers/attn/subln": (_REP, (2, 64)),
    "layers/mlp/w_gate": ((None, "fsdp", "tensor"), (2, 64, 64)),
    "layers/mlp/w_up": ((None, "fsdp", "tensor"), (2, 64, 64)),
    "layers/mlp/w_down": ((None, "tensor", "fsdp"), (2, 64, 64)),
    "layers/mlp/poly_w": (_REP, (2, 3)),
    "layers/mlp/poly_b": (_REP, (2, 1)),
}


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _layout(x) -> tuple[tuple, tuple]:
  spec = tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))
  return spec, x.addressable_shards[0].data.shape


def _assert_gradient_layout(grads):
  """`jax.grad` leaves the layout to GSPMD: each gradient keeps its weight's tensor split (dim by
  dim) and is split over fsdp or summed whole over it (embed's is; unembed's is not); the
  optimizer update then takes each device's fsdp slice."""
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    name = _path(path)
    spec, _ = _layout(g)
    allowed = [{a, None} if a == "fsdp" else {a} for a in LAYOUT[name][0]]
    assert all(a in ok for a, ok in zip(spec, allowed)), (name, spec, LAYOUT[name][0])
    assert len(g.sharding.device_set) == 8, name


@pytest.fixture(scope="module")
def step_on_mesh():
  """The trainer's jitted sft_step (state and batch shardings, donated state), one real step,
  and its gradient function with 1 and 2 micro-batches (no output sharding imposed)."""
  cfg = tiny_config()
  mesh = shd.make_mesh(dict(fsdp=2, tensor=4))
  optimizer, schedule = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-3))
  tokens = random_tokens(cfg, 8, 16)
  batch = dict(tokens=tokens, targets=jnp.roll(tokens, -1, axis=1),
               segment_ids=jnp.ones_like(tokens), positions=jnp.broadcast_to(
                   jnp.arange(16, dtype=jnp.int32), tokens.shape),
               loss_mask=jnp.ones_like(tokens))
  with jax.set_mesh(mesh):
    _, state_shardings = trainer.abstract_train_state(cfg, optimizer, 0, mesh)
    batch_sharding = NamedSharding(mesh, shd.spec_for(("batch", None), cfg.sharding))
    batch = jax.device_put(batch, batch_sharding)
    params = init_params(jax.random.key(0), cfg, mesh)
    state = jax.jit(functools.partial(init_train_state, optimizer=optimizer),
                    out_shardings=state_shardings)(params)
    grads = {m: jax.jit(accumulate_gradients, static_argnums=2)(
        state.params, batch, SFTConfig(cfg, num_microbatches=m))[2] for m in (1, 2)}
    step = jax.jit(functools.partial(sft_step, cfg=SFTConfig(cfg), optimizer=optimizer,
                                     schedule=schedule),
                   in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, None), donate_argnums=0)
    compiled = step.lower(state, batch).compile()
    new_state, _ = compiled(state, batch)
  return cfg, new_state, grads, compiled


def _assert_layout(tree, what: str):
  """Every leaf of a params-shaped tree has its table entry, on all 8 devices."""
  leaves = {_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  assert set(leaves) == set(LAYOUT), (what, sorted(set(leaves) ^ set(LAYOUT)))
  for name, x in leaves.items():
    assert _layout(x) == LAYOUT[name], (what, name, _layout(x), LAYOUT[name])
    assert len(x.sharding.device_set) == 8, (what, name)


def test_step_params_gradients_and_adam_moments_follow_the_layout_table(step_on_mesh):
  _, state, grads, _ = step_on_mesh
  _assert_layout(state.params, "params")
  mu, nu = state.opt_state[1][0].mu, state.opt_state[1][0].nu  # clip, then AdamW's ScaleByAdam
  _assert_layout(mu, "adam mu")
  _assert_layout(nu, "adam nu")
  _assert_gradient_layout(grads[1])
  # Micro-batches sum into a float32 accumulator laid out like the params (ZeRO: 1/8 each).
  _assert_layout(grads[2], "accumulated gradients")


def _collective_shapes(hlo: str, op: str) -> list[tuple[int, ...]]:
  """Result shapes (tuple results flattened) of every `op` in compiled HLO text, sync or async."""
  shapes = []
  for line in hlo.splitlines():
    m = re.search(rf"= (.*?) {op}(?:-start)?\(", line)
    if m:
      shapes += [tuple(int(d) for d in dims.split(",") if d)
                 for dims in re.findall(r"\w+\[([\d,]*)\]", m.group(1))]
  return shapes


def test_compiled_step_keeps_tensor_parallel_weights_split_within_a_temp_bound(step_on_mesh):
  """FSDP gathers a weight's fsdp shards before use and sums gradients over the batch; a
  gather or sum producing a whole tensor-sharded weight (one layer or all) means tensor
  parallelism was lost for it. Per-device temp memory stays under two unsharded float32 copies
  of the parameters (measured: about one; with every weight replicated, about four)."""
  cfg, _, _, compiled = step_on_mesh
  hlo = compiled.as_text()
  key = lambda shape: tuple(sorted(d for d in shape if d > 1))  # noqa: E731  layout-blind
  whole = {}
  for name, (spec, _) in LAYOUT.items():
    if "tensor" in spec:
      full = abstract_shape(cfg, name)
      whole[key(full)] = name
      if name.startswith("layers/"):
        whole[key(full[1:])] = name + " (one layer)"
  gathered = _collective_shapes(hlo, "all-gather")
  assert gathered, "FSDP must all-gather weight shards"
  for op in ("all-gather", "all-reduce"):
    bad = [(s, whole[key(s)]) for s in _collective_shapes(hlo, op) if key(s) in whole]
    assert not bad, (op, bad)
  param_bytes = 4 * sum(int(np.prod(abstract_shape(cfg, n))) for n in LAYOUT)
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 2 * param_bytes, (temp, param_bytes)


def abstract_shape(cfg, name: str) -> tuple[int, ...]:
  node = abstract_params(cfg)
  for part in name.split("/"):
    node = node[part]
  return node.shape
