"""RL objective pieces against hand-computed values; RLConfig validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rl as rl_config
from motif_jax.rl import objectives as obj
from motif_jax.rl.config import RLConfig

REWARDS = np.array([1, 0, 0, 1, 1, 1, 1, 0], np.float32)
GROUPS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def _rl(**overrides) -> RLConfig:
  cfg = RLConfig.from_config_dict(rl_config.get_config("smoke").rl)
  return dataclasses.replace(cfg, **overrides)


def test_grpo_advantages_hand_values():
  # Group 0: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735 -> +-0.866025.
  # Group 1: mean 0.75, deviations (.25, .25, .25, -.75), ss 0.75, std sqrt(0.25) = 0.5.
  adv = obj.ADVANTAGES["grpo"](REWARDS, GROUPS, np.zeros(8), scale="group")
  np.testing.assert_allclose(adv, [.866025, -.866025, -.866025, .866025, .5, .5, .5, -1.5],
                             rtol=1e-5)
  # Dr.GRPO: no std division.
  adv = obj.ADVANTAGES["mean"](REWARDS, GROUPS, np.zeros(8), scale="group")
  np.testing.assert_allclose(adv, [.5, -.5, -.5, .5, .25, .25, .25, -.75])
  # Per-domain scale (one domain): centred values have mean 0 and ss 1.75, std sqrt(1.75/7) =
  # 0.5, so every centred value doubles (a per-group std would give group 0 +-0.866 instead).
  adv = obj.ADVANTAGES["grpo"](REWARDS, GROUPS, np.zeros(8), scale="domain")
  np.testing.assert_allclose(adv, [1, -1, -1, 1, .5, .5, .5, -1.5], rtol=1e-5)
  # All-equal group: zero advantage, not 0/0.
  adv = obj.ADVANTAGES["grpo"](np.ones(4), np.zeros(4), np.zeros(4), scale="group")
  np.testing.assert_array_equal(adv, 0.0)


def test_negative_weight_scales_only_negative_advantages():
  """rl.negative_weight: 1 leaves GRPO's advantages, 0.25 quarters the negative ones, 0 keeps
  only the better-than-group samples (positive sample reinforcement); positives never change."""
  adv = obj.ADVANTAGES["grpo"](REWARDS, GROUPS, np.zeros(8), scale="group")
  np.testing.assert_array_equal(obj.weight_negatives(adv, 1.0), adv)
  np.testing.assert_allclose(obj.weight_negatives(adv, 0.25),
                             [.866025, -.216506, -.216506, .866025, .5, .5, .5, -.375], rtol=1e-5)
  np.testing.assert_allclose(obj.weight_negatives(adv, 0.0),
                             [.866025, 0, 0, .866025, .5, .5, .5, 0], rtol=1e-5)
  with pytest.raises(ValueError, match=r"rl\.negative_weight=1\.5 must be in \[0, 1\]"):
    _rl(negative_weight=1.5)


def test_clip_higher_is_asymmetric_and_dual_clip_caps_negative_advantages():
  ratio = jnp.array([0.7, 0.9, 1.25, 1.3, 0.7, 1.3, 4.0])
  adv = jnp.array([1., 1., 1., 1., -1., -1., -1.])
  loss, stats = obj.clipped_surrogate(ratio, adv, eps_low=0.2, eps_high=0.28, dual_clip=0.0)
  # A > 0: -min(r, clip(r, .8, 1.28)); A < 0: -min(-r, -clip(r)) = max(r, clip(r)).
  np.testing.assert_allclose(loss, [-.7, -.9, -1.25, -1.28, .8, 1.3, 4.0], rtol=1e-6)
  np.testing.assert_array_equal(stats["clip_high"], [0, 0, 0, 1, 0, 0, 0])
  np.testing.assert_array_equal(stats["clip_low"], [0, 0, 0, 0, 1, 0, 0])
  # Symmetric clipping (eps 0.2 both sides) clips 1.25 too: clip-higher's extra room.
  sym, _ = obj.clipped_surrogate(ratio, adv, eps_low=0.2, eps_high=0.2, dual_clip=0.0)
  assert float(sym[2]) == pytest.approx(-1.2)
  grad = jax.grad(lambda r: jnp.sum(obj.clipped_surrogate(
      r, adv, eps_low=0.2, eps_high=0.28, dual_clip=3.0)[0]))(ratio)
  # Clipped tokens carry no gradient; dual clip caps r = 4 (A < 0) at 3 with no gradient.
  np.testing.assert_allclose(grad, [-1, -1, -1, 0, 0, 1, 0])
  loss, stats = obj.clipped_surrogate(ratio, adv, eps_low=0.2, eps_high=0.28, dual_clip=3.0)
  assert float(loss[6]) == pytest.approx(3.0)
  np.testing.assert_array_equal(stats["clip_dual"], [0, 0, 0, 0, 0, 0, 1])


def test_k3_kl_and_truncated_importance_weights_hand_values():
  # d = log .25 - log .5 = -log 2: e^d - d - 1 = 0.5 + 0.693147 - 1.
  np.testing.assert_allclose(obj.k3_kl(jnp.log(0.5), jnp.log(0.25)), 0.193147, rtol=1e-5)
  assert float(obj.k3_kl(jnp.log(0.3), jnp.log(0.3))) == 0.0
  old = jnp.log(jnp.array([0.5, 0.2, 0.3]))
  behaviour = jnp.log(jnp.array([0.1, 0.4, 0.3]))
  w, stats = obj.truncated_importance_weights(old, behaviour, 2.0)
  np.testing.assert_allclose(w, [2.0, 0.5, 1.0], rtol=1e-6)  # 5 capped at 2; on-policy 1
  np.testing.assert_allclose(stats["is_raw"], [5.0, 0.5, 1.0], rtol=1e-5)
  np.testing.assert_array_equal(stats["is_capped"], [1, 0, 0])
  w, _ = obj.truncated_importance_weights(old, behaviour, 0.0)
  np.testing.assert_array_equal(w, 1.0)


# One row, two trajectories: sequence 1 on tokens 0-2, sequence 2 on tokens 3-4, padding at 5.
SEQ = jnp.array([[1, 1, 1, 2, 2, 0]])
MASK = jnp.array([[1, 1, 1, 1, 1, 0]])


def test_token_vs_sequence_normalization_hand_values():
  loss = jnp.array([[1., 2., 3., 10., 20., 99.]])
  tok = obj.token_weights(MASK, SEQ, "token")
  seq = obj.token_weights(MASK, SEQ, "sequence")
  np.testing.assert_allclose(seq, [[1 / 3, 1 / 3, 1 / 3, .5, .5, 0]], rtol=1e-6)
  assert float(obj.sequence_count(MASK, SEQ)) == 2.0
  # DAPO: (1+2+3+10+20) / 5 tokens = 7.2; sequence level: (mean 2 + mean 15) / 2 = 8.5.
  assert float(jnp.sum(tok * loss) / jnp.sum(MASK)) == pytest.approx(7.2)
  assert float(jnp.sum(seq * loss) / obj.sequence_count(MASK, SEQ)) == pytest.approx(8.5)


def test_gspo_ratio_is_the_geometric_mean_of_the_sequence_token_ratios():
  log_ratio = jnp.array([[0.1, 0.2, 0.3, -0.2, 0.4, 7.0]])
  got = obj.RATIOS["sequence"](log_ratio, jnp.zeros_like(log_ratio), MASK, SEQ)
  np.testing.assert_allclose(got, [[.2, .2, .2, .1, .1, 0]], atol=1e-6)
  tok = obj.RATIOS["token"](jnp.array([50., -50.]), jnp.zeros(2), None, None)
  np.testing.assert_array_equal(tok, [20., -20.])  # clamped: no exp overflow


def test_on_policy_terms_have_unit_ratios_and_weights_and_the_policy_gradient():
  logp = jnp.log(jnp.array([[0.5, 0.25, 0.1, 0.8, 0.3, 0.9]]))
  adv = jnp.array([[1., 1., 1., -2., -2., 0.]])
  batch = dict(old_logprobs=logp, behaviour_logprobs=logp, advantages=adv, loss_mask=MASK,
               sequence_ids=SEQ)
  cfg = _rl(tis_cap=2.0, dual_clip=3.0)
  loss, stats = obj.policy_loss_terms(logp, jnp.zeros_like(logp), batch, cfg)
  for name in ("ratio", "is_raw"):
    np.testing.assert_allclose(stats[name], 1.0, rtol=1e-6)
  for name in ("clip_low", "clip_high", "clip_dual", "is_capped", "kl_old"):
    np.testing.assert_array_equal(stats[name], 0.0)
  np.testing.assert_allclose(loss, -adv, rtol=1e-6)
  # d loss / d log π = -A (ratio 1): REINFORCE with the group advantage.
  grad = jax.grad(lambda lp: jnp.sum(obj.policy_loss_terms(lp, jnp.zeros_like(lp), batch,
                                                           cfg)[0]))(logp)
  np.testing.assert_allclose(grad, -adv, rtol=1e-6)


def test_kl_and_entropy_terms_enter_the_loss_with_their_coefficients():
  logp = jnp.log(jnp.array([[0.5, 0.5]]))
  batch = dict(old_logprobs=logp, behaviour_logprobs=logp, advantages=jnp.zeros((1, 2)),
               loss_mask=jnp.ones((1, 2)), sequence_ids=jnp.ones((1, 2), jnp.int32),
               ref_logprobs=jnp.log(jnp.array([[0.25, 0.5]])))
  loss, stats = obj.policy_loss_terms(logp, jnp.array([[1.0, 2.0]]), batch,
                                      _rl(kl_coef=0.1, entropy_coef=0.01))
  np.testing.assert_allclose(stats["kl_ref"], [[0.193147, 0]], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(loss, [[0.1 * 0.193147 - 0.01, -0.02]], rtol=1e-5)


def test_rl_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"rl\.eps_low=1\.5"):
    _rl(eps_low=1.5)
  with pytest.raises(ValueError, match=r"rl\.dual_clip=0\.5"):
    _rl(dual_clip=0.5)
  with pytest.raises(ValueError, match=r"rl\.loss_level='mean'"):
    _rl(loss_level="mean")
  with pytest.raises(ValueError, match=r"rl\.pass_rate_low=0\.9, rl\.pass_rate_high=0\.1"):
    _rl(pass_rate_low=0.9, pass_rate_high=0.1)
  with pytest.raises(ValueError, match=r"rl\.domain_weights='1'"):
    _rl(domain_weights="1")
  with pytest.raises(ValueError, match=r"missing config fields: rl\.tis_cap"):
    RLConfig.from_config_dict({k: v for k, v in rl_config.rl_section().items()
                               if k != "tis_cap"})
  for variant in ("smoke", "quickstart", "motif"):
    cfg = RLConfig.from_config_dict(rl_config.get_config(variant).rl)
    assert (cfg.eps_low, cfg.eps_high, cfg.kl_coef, cfg.tis_cap) == (0.2, 0.28, 0.0, 2.0)


def test_tis_weight_scales_the_policy_gradient_term_of_replayed_tokens():
  """π_old = π_θ, μ 5x less likely (an older sampler): weight min(5, cap 2) multiplies -ρA."""
  logp = jnp.log(jnp.array([[0.5, 0.5]]))
  batch = dict(old_logprobs=logp, behaviour_logprobs=logp - jnp.log(jnp.array([[5.0, 1.25]])),
               advantages=jnp.array([[1.0, -1.0]]), loss_mask=jnp.ones((1, 2)),
               sequence_ids=jnp.ones((1, 2), jnp.int32))
  loss, stats = obj.policy_loss_terms(logp, jnp.zeros_like(logp), batch, _rl(tis_cap=2.0))
  np.testing.assert_allclose(loss, [[-2.0, 1.25]], rtol=1e-5)
  np.testing.assert_array_equal(stats["is_capped"], [[1, 0]])
  loss, _ = obj.policy_loss_terms(logp, jnp.zeros_like(logp), batch, _rl(tis_cap=0.0))
  np.testing.assert_allclose(loss, [[-1.0, 1.0]], rtol=1e-6)


def test_with_advantages_applies_the_negative_weight_per_group():
  from motif_jax.rl import rollout
  from motif_jax.rl.filtering import Group
  from motif_jax.rl.replay import Trajectory

  def traj(reward):
    return Trajectory(prompt_tokens=np.ones(2, np.int32), completion_tokens=np.ones(3, np.int32),
                      behaviour_logprobs=np.zeros(3, np.float32), reward=reward, advantage=0.0,
                      passed=reward > 0, truncated=False, prompt_id=0, domain=0, version=0)
  groups = [Group(prompt_id=g, rewards=list(REWARDS[GROUPS == g]),
                  passed=list(REWARDS[GROUPS == g] > 0),
                  payload=[traj(float(r)) for r in REWARDS[GROUPS == g]]) for g in (0, 1)]
  got = [t.advantage for t in rollout.with_advantages(groups, _rl(negative_weight=0.5))]
  np.testing.assert_allclose(got, [.866025, -.433013, -.433013, .866025, .5, .5, .5, -.75],
                             rtol=1e-5)
