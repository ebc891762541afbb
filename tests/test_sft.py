"""sft_step: full-batch-exact gradient accumulation, non-finite skipping, optimizers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model_helpers import random_params, tiny_config
from motif_jax import optim
from motif_jax.sft import SFTConfig, accumulate_gradients, sft_loss, sft_step
from motif_jax.train_state import init_train_state


def synthetic_batch(cfg, batch=8, length=16, seed=0):
  """Packed-looking rows with ragged completion masks (rows keep 1..length-2 target tokens)."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  tokens = jax.random.randint(k1, (batch, length), 0, cfg.vocab_size, jnp.int32)
  seg = jnp.where(jnp.arange(length) < length // 2, 1, 2)[None].repeat(batch, 0).astype(jnp.int32)
  positions = jnp.where(seg == 1, jnp.arange(length), jnp.arange(length) - length // 2)
  keep = (jnp.arange(batch) * 3 % (length - 2) + 1)[:, None]  # tokens kept per row: ragged
  loss_mask = (jnp.arange(length)[None] >= length - keep).astype(jnp.int32)
  targets = jnp.roll(tokens, -1, axis=1)
  del k2
  return dict(tokens=tokens, targets=targets, segment_ids=seg, positions=positions,
              loss_mask=loss_mask)


@functools.partial(jax.jit, static_argnames="cfg")
def _normalized_grads(params, batch, cfg):
  loss_sum, tokens, grads = accumulate_gradients(params, batch, cfg)
  return loss_sum / tokens, jax.tree.map(lambda g: g / tokens, grads), tokens


@pytest.fixture(scope="module")
def full_batch_oracle():
  """(model, params, batch, loss, gradient): one jax.grad of the token-mean loss over the batch."""
  model = tiny_config()
  params = random_params(model)
  batch = synthetic_batch(model)

  def full_mean(p):
    loss_sum, aux = sft_loss(p, batch, SFTConfig(model))
    return loss_sum / aux["tokens"]
  return (model, params, batch, *jax.jit(jax.value_and_grad(full_mean))(params))


def test_microbatched_gradient_equals_full_batch_with_ragged_token_counts(full_batch_oracle):
  model, params, batch, oracle_loss, oracle = full_batch_oracle
  counts = batch["loss_mask"].sum(1)
  assert len(set(np.asarray(counts).tolist())) > 3  # ragged on purpose

  loss4, grads4, tokens = _normalized_grads(params, batch, SFTConfig(model, num_microbatches=4))
  assert float(tokens) == float(counts.sum())
  np.testing.assert_allclose(loss4, oracle_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads4), jax.tree.leaves(oracle)):
    rel_l2 = float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))
    assert rel_l2 < 1e-5, rel_l2  # float32 summation order only (MaxText reaches 6e-3)

  # Averaging per-micro-batch means (the Tunix bug) gives a different gradient here.
  means = []
  for m in range(4):
    mb = {k: v[m::4] for k, v in batch.items()}
    _, g, _ = _normalized_grads(params, mb, SFTConfig(model))
    means.append(g)
  mean_of_means = jax.tree.map(lambda *g: sum(g) / 4, *means)
  diff = optax.tree.norm(jax.tree.map(jnp.subtract, mean_of_means, oracle))
  assert float(diff) > 1e-3 * float(optax.tree.norm(oracle))


def _step_fn(model, optimizer, schedule, microbatches=1):
  return jax.jit(functools.partial(sft_step, cfg=SFTConfig(model, num_microbatches=microbatches),
                                   optimizer=optimizer, schedule=schedule))


def test_non_finite_step_is_skipped_and_counted():
  model = tiny_config()
  params = random_params(model)
  # Poison one embedding row: a batch containing that token has non-finite gradients.
  params["embed"] = params["embed"].at[7].set(jnp.inf)
  optimizer, schedule = optim.make_optimizer(optim.OptimConfig(learning_rate=1e-3))
  step = _step_fn(model, optimizer, schedule)
  state = init_train_state(params, optimizer)
  good = synthetic_batch(model, seed=1)
  good["tokens"] = jnp.where(good["tokens"] == 7, 8, good["tokens"])
  bad = dict(good, tokens=good["tokens"].at[0, 3].set(7))

  state1, m1 = step(state, bad)
  assert int(m1["train/skipped"]) == 1 and int(state1.bad_steps) == 1
  assert int(state1.skipped_steps) == 1 and int(state1.step) == 1
  for a, b in zip(jax.tree.leaves((state1.params, state1.opt_state)),
                  jax.tree.leaves((state.params, state.opt_state))):
    np.testing.assert_array_equal(a, b)
  state2, _ = step(state1, bad)
  assert int(state2.bad_steps) == 2
  state3, m3 = step(state2, good)
  assert int(m3["train/skipped"]) == 0 and int(state3.bad_steps) == 0
  assert int(state3.skipped_steps) == 2
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state3.params["layers"],
                         state2.params["layers"])
  assert all(jax.tree.leaves(changed))


def test_microbatched_step_equals_the_full_batch_update(full_batch_oracle):
  """One sft_step of plain SGD with 4 micro-batches (lr 1: new params = params - mean gradient,
  so any scale error in the accumulation shows, unlike Adam's first step, about lr * sign(g))
  gives the full batch's loss, token count and the oracle's updated params."""
  model, params, batch, oracle_loss, oracle_grads = full_batch_oracle
  sgd = optax.sgd(1.0)
  step = _step_fn(model, sgd, optax.constant_schedule(1.0), microbatches=4)
  new, metrics = step(init_train_state(params, sgd), batch)
  np.testing.assert_allclose(metrics["loss/ce"], oracle_loss, rtol=1e-6)
  assert int(metrics["train/tokens"]) == int(batch["loss_mask"].sum())
  expected = jax.tree.map(jnp.subtract, params, oracle_grads)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(new.params)[0],
                          jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_training_steps_reduce_the_loss(name):
  model = tiny_config()
  params = random_params(model, scale=0.02)
  optimizer, schedule = optim.make_optimizer(optim.OptimConfig(
      name=name, learning_rate=3e-3 if name == "adamw" else 2e-2, warmup_steps=1,
      decay_steps=20, weight_decay=0.01))
  step = _step_fn(model, optimizer, schedule, microbatches=2)
  state = init_train_state(params, optimizer)
  batch = synthetic_batch(model, seed=3)
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss/ce"]))
  assert losses[-1] < losses[0] - 0.5, losses


def test_schedule_hand_values():
  cfg = optim.OptimConfig(learning_rate=1.0, warmup_steps=4, decay_steps=10, final_lr_ratio=0.1)
  schedule = optim.make_schedule(cfg)
  # Linear warmup 0 -> 1 over 4 steps, then cosine from 1 to 0.1 over 10 steps:
  # at 5 steps into the decay, 0.1 + 0.9 * (1 + cos(pi / 2)) / 2 = 0.55.
  np.testing.assert_allclose([schedule(0), schedule(2), schedule(4), schedule(9), schedule(14)],
                             [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)


def test_muon_applies_to_hidden_matrices_only():
  model = tiny_config()
  params = random_params(model)
  dims = optim.muon_dimension_numbers(params)
  assert dims["layers"]["attn"]["wq"].reduction_axis == 1
  assert dims["embed"] is None and dims["unembed"] is None
  assert dims["layers"]["attn"]["lambda_q1"] is None
  mask = optim.weight_decay_mask(params)
  assert mask["layers"]["mlp"]["w_up"] and not mask["layers"]["attn_norm"]


def test_optim_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"optim\.name='sgd'"):
    optim.OptimConfig(name="sgd")
  with pytest.raises(ValueError, match=r"optim\.learning_rate=0"):
    optim.OptimConfig(learning_rate=0)
  with pytest.raises(ValueError, match=r"unknown config fields: optim\.lr"):
    optim.OptimConfig.from_config_dict({"lr": 1.0})
