"""rl_step: micro-batches give the full-batch update, a policy-gradient step moves log-probs the
advantage's way, on-policy data has unit ratios and weights, non-finite steps are skipped, and
an 8-device mesh equals one device. Two step compiles (1 and 4 micro-batches) are shared."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding

from configs import rl as rl_config
from model_helpers import random_params, tiny_config
from motif_jax import sharding as shd
from motif_jax import trainer
from motif_jax.rl.config import RLConfig
from motif_jax.rl.objectives import ADVANTAGES
from motif_jax.rl.packing import add_sft_rows, pack_trajectories
from motif_jax.rl.packing import rl_count as rl_count_of
from motif_jax.rl.replay import Trajectory
from motif_jax.rl.step import (RLStepConfig, jit_old_logprobs, jit_rl_step, policy_logprobs,
                               rl_loss, rl_updates)
from motif_jax.train_state import init_train_state

B, T, LR = 8, 16, 0.5


def rl_batch(model, seed=0):
  """8 rows x 2 trajectories (prompt 3 tokens, ragged completions), both domains, advantages
  of both signs, a π_old a little off μ (TIS weights != 1) and a reference policy."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, model.vocab_size, (B, T)).astype(np.int32)
  seq = np.where(np.arange(T) < T // 2, 1, 2)[None].repeat(B, 0).astype(np.int32)
  start = np.where(seq == 1, 0, T // 2)
  positions = (np.arange(T)[None] - start).astype(np.int32)
  completion = 1 + (np.arange(B)[:, None] * 3 + seq) % 4  # 1..4 completion tokens: ragged
  loss_mask = ((positions >= 3) & (positions < 3 + completion)).astype(np.int32)
  adv_seq = rng.choice([-1.5, -0.5, 0.5, 1.5], (B, 2)).astype(np.float32)
  pick = lambda per_seq: np.take_along_axis(per_seq, seq - 1, axis=1)  # noqa: E731
  behaviour = (-2.0 + 0.3 * rng.standard_normal((B, T))).astype(np.float32) * loss_mask
  return dict(
      tokens=tokens, targets=np.roll(tokens, -1, axis=1), segment_ids=seq, positions=positions,
      loss_mask=loss_mask, sequence_ids=seq, advantages=pick(adv_seq),
      behaviour_logprobs=behaviour,
      old_logprobs=behaviour + (0.4 * rng.standard_normal((B, T))).astype(np.float32),
      ref_logprobs=behaviour - 0.1, rewards=pick((adv_seq > 0).astype(np.float32)),
      passed=pick((adv_seq > 1).astype(np.float32)),
      truncated=pick(rng.integers(0, 2, (B, 2)).astype(np.float32)),
      domain_ids=np.broadcast_to((np.arange(B) % 2)[:, None], (B, T)).astype(np.int32))


def _rl(**overrides):
  cfg = RLConfig.from_config_dict(rl_config.get_config("smoke").rl)
  return dataclasses.replace(cfg, **overrides)


# Two updates per rollout batch: the step takes π_old from the batch (rl_batch's, off μ and off
# the current policy, so clipping and TIS capping both happen).
RL = _rl(kl_coef=0.05, entropy_coef=0.01, dual_clip=3.0, tis_cap=1.5, updates_per_rollout=2)


@pytest.fixture(scope="module")
def setup():
  model = tiny_config()
  params = random_params(model, scale=0.02)
  sgd = optax.sgd(LR)
  steps = {m: jit_rl_step(RLStepConfig(model, RL, num_microbatches=m), sgd,
                          optax.constant_schedule(LR)) for m in (1, 4)}
  return model, params, sgd, steps


def fresh_state(params, sgd):
  """A TrainState on copies of params: the jitted step donates (deletes) its input state."""
  state = jax.jit(functools.partial(init_train_state, optimizer=sgd))(params)
  return jax.tree.map(jnp.copy, state)  # distinct buffers (jit may forward its inputs)


def _new_params(step, params, sgd, batch):
  return step(fresh_state(params, sgd), batch)


def test_microbatched_rl_update_equals_the_full_batch(setup):
  model, params, sgd, steps = setup
  batch = rl_batch(model)
  s1, m1 = _new_params(steps[1], params, sgd, batch)
  s4, m4 = _new_params(steps[4], params, sgd, batch)
  counts = batch["loss_mask"].sum(1)
  assert len(set(counts.tolist())) > 2  # ragged rows
  assert float(m4["train/tokens"]) == counts.sum() == float(m1["train/tokens"])
  assert float(m4["train/sequences"]) == 2 * B
  np.testing.assert_allclose(m4["loss/rl"], m1["loss/rl"], rtol=1e-5)
  for name in ("clip/low", "clip/high", "is/capped", "ratio/max", "kl/ref", "entropy"):
    np.testing.assert_allclose(m4[name], m1[name], rtol=1e-5, err_msg=name)
  assert float(m1["is/capped"]) > 0 and float(m1["clip/low"] + m1["clip/high"]) > 0
  step_size = optax.tree.norm(jax.tree.map(jnp.subtract, s1.params, params))
  delta = optax.tree.norm(jax.tree.map(jnp.subtract, s4.params, s1.params))
  assert float(step_size) > 1e-3 and float(delta) < 1e-5 * float(step_size)


def test_microbatched_old_logprobs_equal_one_pass_in_row_order(setup):
  """π_old scoring in strided micro-batches (the rollout batch's scoring memory) gives each
  row its own log-probs, equal to one forward pass over the whole batch."""
  model, params, _, _ = setup
  batch = rl_batch(model, seed=3)
  one = jit_old_logprobs(RLStepConfig(model, RL))(params, batch)
  four = jit_old_logprobs(RLStepConfig(model, RL, num_microbatches=4))(params, batch)
  assert one.shape == (B, T) and float(jnp.abs(one).sum()) > 0
  np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-6)
  # rows are not exchangeable: a wrong un-split would put another row's values here
  assert float(jnp.abs(one[0] - one[1]).max()) > 1e-3


def test_rollout_metrics_per_domain_hand_values(setup):
  model, params, sgd, steps = setup
  batch = rl_batch(model)
  _, m = _new_params(steps[1], params, sgd, batch)
  mask, seq = batch["loss_mask"], batch["sequence_ids"]
  per_seq = lambda k: np.array([[batch[k][b][seq[b] == s][0] for s in (1, 2)]  # noqa: E731
                                for b in range(B)])
  lengths = np.array([[mask[b][seq[b] == s].sum() for s in (1, 2)] for b in range(B)])
  np.testing.assert_allclose(m["rl/reward"], per_seq("rewards").mean(), rtol=1e-5)
  np.testing.assert_allclose(m["rl/pass_rate"], per_seq("passed").mean(), rtol=1e-5)
  np.testing.assert_allclose(m["rl/truncation"], per_seq("truncated").mean(), rtol=1e-5)
  np.testing.assert_allclose(m["rl/response_length"], lengths.mean(), rtol=1e-6)
  np.testing.assert_allclose(m["adv/mean"], per_seq("advantages").mean(), rtol=1e-5)
  np.testing.assert_allclose(m["adv/std"], per_seq("advantages").std(), rtol=1e-4)
  rows = np.arange(B) % 2 == 1  # domain 1 ("lists") = odd rows
  np.testing.assert_allclose(m["domain/lists/reward"], per_seq("rewards")[rows].mean(), rtol=1e-5)
  np.testing.assert_allclose(m["domain/arith/response_length"], lengths[~rows].mean(), rtol=1e-6)
  assert float(m["domain/arith/sequences"]) == float(m["domain/lists/sequences"]) == B


def test_policy_gradient_step_moves_log_probs_the_advantage_way(setup):
  """One prompt, 16 sampled completions scored 1/0, GRPO advantages, packed into rows; on
  policy: ratio and TIS weight exactly 1, no clipping; after the step log π rises on
  positive-advantage tokens and falls on negative ones."""
  model, params, sgd, steps = setup
  rng = np.random.default_rng(1)
  prompt = rng.integers(0, model.vocab_size, 3).astype(np.int32)
  rewards = np.tile([1.0, 0.0, 0.0, 1.0], 4)
  adv = ADVANTAGES["grpo"](rewards, np.zeros(16), np.zeros(16), scale="group")
  trajectories = [Trajectory(
      prompt, rng.integers(0, model.vocab_size, 1 + i % 4).astype(np.int32),
      np.zeros(1 + i % 4, np.float32), reward=rewards[i], advantage=float(adv[i]),
      passed=bool(rewards[i]), truncated=False, prompt_id=0, domain=i % 2, version=0)
      for i in range(16)]
  batch = pack_trajectories(trajectories, rows=B, seq_len=T)
  logprobs = jit_old_logprobs(RLStepConfig(model, RL))
  current = np.asarray(logprobs(params, batch))
  on_policy = dict(batch, behaviour_logprobs=current, ref_logprobs=current)
  cfg = RLStepConfig(model, dataclasses.replace(RL, old_policy="recompute",
                                                updates_per_rollout=1))
  state, metrics = rl_updates(steps[1], fresh_state(params, sgd), on_policy, cfg=cfg,
                              old_logprobs_fn=logprobs)
  m = metrics[0]
  # Ratio 1, reference = current: loss = -(token mean of A) - entropy_coef * mean entropy.
  mask = batch["loss_mask"] > 0
  expected = -batch["advantages"][mask].mean() - RL.entropy_coef * float(m["entropy"])
  np.testing.assert_allclose(m["loss/rl"], expected, rtol=1e-5)
  for name in ("ratio/mean", "ratio/max", "is/mean", "is/max"):
    np.testing.assert_allclose(m[name], 1.0, rtol=1e-5, err_msg=name)
  for name in ("is/capped", "clip/low", "clip/high", "clip/dual", "kl/old", "kl/ref"):
    assert float(m[name]) == 0.0, name
  after = np.asarray(logprobs(state.params, batch))
  change = (after - current)[mask]
  adv = batch["advantages"][mask]
  assert change[adv > 0].mean() > 0 > change[adv < 0].mean()
  assert np.corrcoef(change, adv)[0, 1] > 0.5


def test_non_finite_step_is_skipped_and_counted(setup):
  model, params, sgd, steps = setup
  poisoned = dict(params, embed=params["embed"].at[int(rl_batch(model)["tokens"][0, 0])]
                  .set(jnp.inf))
  state = fresh_state(poisoned, sgd)
  new, m = steps[1](state, rl_batch(model))
  assert int(m["train/skipped"]) == 1 and int(new.skipped_steps) == 1 and int(new.step) == 1
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(poisoned)):
    np.testing.assert_array_equal(a, b)


def test_sharded_sequence_level_step_equals_one_device(setup):
  """GSPO ratio + sequence-level normalization, 2 micro-batches with ragged sequence counts on a
  (data, fsdp, tensor) = (2, 2, 2) mesh, against one device with the whole batch at once."""
  model, params, sgd, _ = setup
  batch = rl_batch(model, seed=2)
  # Rows 0 and 2 lose their second trajectory: micro-batches hold 6 and 8 sequences.
  batch["loss_mask"][[0, 2], T // 2:] = 0
  rl = dataclasses.replace(RL, loss_level="sequence", ratio_level="sequence")
  single = jit_rl_step(RLStepConfig(model, rl), sgd, optax.constant_schedule(LR))
  ref_state, ref_m = single(fresh_state(params, sgd), batch)
  assert float(ref_m["train/sequences"]) == 2 * B - 2
  mesh = shd.make_mesh(dict(data=2, fsdp=2, tensor=2))
  cfg = RLStepConfig(model, rl, num_microbatches=2)
  with jax.set_mesh(mesh):
    _, state_shardings = trainer.abstract_train_state(model, sgd, 0, mesh)
    batch_sharding = NamedSharding(mesh, shd.spec_for(("batch", None), model.sharding))
    step = jit_rl_step(cfg, sgd, optax.constant_schedule(LR), state_shardings, batch_sharding)
    state = jax.jit(functools.partial(init_train_state, optimizer=sgd),
                    out_shardings=state_shardings)(params)
    new, m = step(state, jax.device_put(batch, batch_sharding))
  assert len(new.params["layers"]["attn"]["wq"].addressable_shards) == 8
  for name in ("loss/rl", "rl/reward", "clip/high", "is/capped", "entropy", "grad/norm",
               "train/sequences"):
    np.testing.assert_allclose(m[name], ref_m[name], rtol=1e-4, err_msg=name)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(new.params)[0],
                          jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def test_one_update_per_rollout_takes_pi_old_from_its_own_forward_pass(setup):
  """updates_per_rollout=1: the step uses the stop-gradient of its own log-probs as π_old and no
  scoring pass runs; the update equals scoring π_old first and stepping on it (TIS weights off 1
  and capped: μ is π_old plus noise)."""
  model, params, sgd, _ = setup
  batch = rl_batch(model, seed=3)
  one = RLStepConfig(model, dataclasses.replace(RL, updates_per_rollout=1))
  two = RLStepConfig(model, RL)
  assert one.old_is_current and not two.old_is_current
  sched = optax.constant_schedule(LR)

  def no_scoring(*_):
    raise AssertionError("scored π_old in a separate pass")

  old = jit_old_logprobs(two)(params, batch)
  noise = np.random.default_rng(4).standard_normal(old.shape).astype(np.float32)
  batch = dict(batch, behaviour_logprobs=(np.asarray(old) + 0.5 * noise) * batch["loss_mask"])
  state_a, (m_a,) = rl_updates(jit_rl_step(one, sgd, sched), fresh_state(params, sgd), batch,
                               cfg=one, old_logprobs_fn=no_scoring)
  state_b, m_b = jit_rl_step(two, sgd, sched)(fresh_state(params, sgd),
                                              dict(batch, old_logprobs=old))
  for name in ("loss/rl", "is/mean", "is/max", "is/capped", "ratio/mean"):
    np.testing.assert_allclose(m_a[name], m_b[name], rtol=1e-5, atol=1e-7, err_msg=name)
  assert float(m_a["is/capped"]) > 0 and float(m_a["ratio/max"]) == 1.0
  step_size = optax.tree.norm(jax.tree.map(jnp.subtract, state_b.params, params))
  delta = optax.tree.norm(jax.tree.map(jnp.subtract, state_a.params, state_b.params))
  assert float(step_size) > 1e-3 and float(delta) < 1e-5 * float(step_size)


def _sft_rows(model, rows=4, seed=7):
  """Packed SFT rows: two segments per row, ragged loss masks."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, model.vocab_size, (rows, T)).astype(np.int32)
  seg = np.where(np.arange(T) < 10, 1, 2)[None].repeat(rows, 0).astype(np.int32)
  positions = (np.arange(T)[None] - np.where(seg == 1, 0, 10)).astype(np.int32)
  loss_mask = ((positions >= 2) & (positions < 2 + np.arange(1, rows + 1)[:, None] * 2)
               ).astype(np.int32)
  return dict(tokens=tokens, targets=np.roll(tokens, -1, axis=1), segment_ids=seg,
              positions=positions, loss_mask=loss_mask)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_add_sft_rows_scales_the_sft_term_by_the_rl_count(setup, level):
  model = setup[0]
  batch, sft = rl_batch(model), _sft_rows(model)
  out = add_sft_rows(batch, sft, coef=0.5, level=level)
  assert out["tokens"].shape == (B + 4, T)
  rl_count = batch["loss_mask"].sum() if level == "token" else 2 * B  # 2 trajectories per row
  assert rl_count_of(batch, level) == rl_count
  np.testing.assert_allclose(out["sft_weights"][B:][sft["loss_mask"] > 0],
                             0.5 * rl_count / sft["loss_mask"].sum())
  assert not out["sft_weights"][:B].any() and not out["loss_mask"][B:].any()
  assert not out["sequence_ids"][B:].any() and not out["advantages"][B:].any()
  np.testing.assert_array_equal(out["segment_ids"][B:], sft["segment_ids"])


def test_sft_term_adds_coef_times_the_mean_sft_nll_under_microbatching(setup):
  """loss = RL loss + sft_coef x mean SFT NLL: the step's loss and update equal the gradient of
  that oracle, with 1 and 4 micro-batches, and the RL metrics do not see the SFT rows."""
  model, params, sgd, steps = setup
  rl = dataclasses.replace(RL, sft_coef=0.5)
  batch, sft = rl_batch(model), _sft_rows(model)
  mixed = add_sft_rows(batch, sft, coef=0.5, level=rl.loss_level)
  cfg = RLStepConfig(model, rl)

  def oracle(p):
    rl_sum, _ = rl_loss(p, {k: batch[k] for k in RLStepConfig(model, RL).batch_keys},
                        RLStepConfig(model, RL))
    logp, _ = policy_logprobs(p, sft, cfg)
    return rl_sum / batch["loss_mask"].sum() - 0.5 * logp.sum() / sft["loss_mask"].sum()

  expected_loss, grads = jax.value_and_grad(oracle)(params)
  _, m_rl = _new_params(steps[1], params, sgd, batch)
  nll = float((expected_loss - m_rl["loss/rl"]) / 0.5)
  for m in (1, 4):
    step = jit_rl_step(RLStepConfig(model, rl, num_microbatches=m), sgd,
                       optax.constant_schedule(LR))
    state, metrics = _new_params(step, params, sgd, mixed)
    np.testing.assert_allclose(metrics["loss/rl"], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss/sft"], nll, rtol=1e-4)
    assert float(metrics["train/sft_tokens"]) == sft["loss_mask"].sum()
    for name in ("train/tokens", "rl/reward", "entropy", "clip/low", "is/mean"):
      np.testing.assert_allclose(metrics[name], m_rl[name], rtol=1e-5, err_msg=name)
    for new, old, g in zip(jax.tree.leaves(state.params), jax.tree.leaves(params),
                           jax.tree.leaves(grads)):
      np.testing.assert_allclose(new, old - LR * g, rtol=1e-4, atol=1e-6)
