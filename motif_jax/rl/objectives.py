"""RL objective pieces: small named pure functions, chosen by config name (rl.* in RLConfig).

Host side (numpy, per trajectory): group advantages, `ADVANTAGES[rl.advantage]`.
Device side (jax, per token [B, T]): log-ratios at token or sequence level (GSPO,
`RATIOS[rl.ratio_level]`), the PPO surrogate with asymmetric clipping (clip-higher) and an
optional dual clip, the k3 KL estimator, truncated importance weights (TIS), token or sequence
weights for the aggregation (`rl.loss_level`). `policy_loss_terms` composes them into per-token
loss terms and per-token statistics; the step sums both with `token_weights` and divides once
by the global token or sequence count.

Names: π_θ is the policy being trained, π_old the policy the PPO ratio is taken against (fixed
over `rl.updates_per_rollout` updates), μ the behaviour policy whose samples these are (the
sampler's log-probs, possibly several policy versions old for replayed trajectories).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from motif_jax.rl.config import RLConfig

MAX_LOG_RATIO = 20.0  # |log ratio| clamp before exp: exp(20) ~ 5e8, no inf * 0 = nan gradients


# ---- advantages (host side, one value per trajectory) -----------------------------------------

def _group_mean(x_n: np.ndarray, group_n: np.ndarray) -> np.ndarray:
  _, inv = np.unique(group_n, return_inverse=True)
  sums = np.bincount(inv, weights=x_n)
  counts = np.bincount(inv)
  return (sums / counts)[inv]


def _std(x_n: np.ndarray, by_n: np.ndarray) -> np.ndarray:
  """Unbiased (n - 1) std of x within each `by` value, per element; 1 where n < 2 (as TRL/verl)."""
  _, inv = np.unique(by_n, return_inverse=True)
  counts = np.bincount(inv)
  mean = np.bincount(inv, weights=x_n) / counts
  ss = np.bincount(inv, weights=(x_n - mean[inv]) ** 2)
  std = np.where(counts > 1, np.sqrt(ss / np.maximum(counts - 1, 1)), 1.0)
  return std[inv]


def mean_advantages(rewards_n, group_n, domain_n, *, scale: str) -> np.ndarray:
  """Dr.GRPO: r - mean(r of the group); no std division (`scale` is ignored)."""
  del domain_n, scale
  rewards_n = np.asarray(rewards_n, np.float64)
  return (rewards_n - _group_mean(rewards_n, np.asarray(group_n))).astype(np.float32)


def grpo_advantages(rewards_n, group_n, domain_n, *, scale: str, eps: float = 1e-6
                    ) -> np.ndarray:
  """GRPO: (r - group mean) / (std + eps), the std of the group's rewards (scale="group") or of
  the centred advantages over the trajectory's domain (scale="domain")."""
  rewards_n = np.asarray(rewards_n, np.float64)
  centred = rewards_n - _group_mean(rewards_n, np.asarray(group_n))
  std = _std(rewards_n, np.asarray(group_n)) if scale == "group" else _std(
      centred, np.asarray(domain_n))
  return (centred / (std + eps)).astype(np.float32)


ADVANTAGES = {"grpo": grpo_advantages, "mean": mean_advantages}


def weight_negatives(adv_n: np.ndarray, weight: float) -> np.ndarray:
  """Negative advantages times `weight` (1: unchanged; 0: only better-than-group samples are
  reinforced, positive sample reinforcement)."""
  adv_n = np.asarray(adv_n, np.float32)
  return np.where(adv_n < 0, adv_n * np.float32(weight), adv_n)


# ---- per-sequence reductions over packed rows ---------------------------------------------------

def sequence_sum(x_bt: jax.Array, seq_bt: jax.Array) -> jax.Array:
  """Per token, the sum of x over the tokens of its sequence (same id in the same row).

  seq_bt: per-row trajectory ids in [0, T]; a sequence never spans rows, so micro-batches of rows
  see whole sequences.
  """
  t = x_bt.shape[1]

  def row(x_t, s_t):
    return jax.ops.segment_sum(x_t, s_t, num_segments=t + 1)[s_t]
  return jax.vmap(row)(x_bt, seq_bt)


def sequence_count(mask_bt: jax.Array, seq_bt: jax.Array) -> jax.Array:
  """Number of sequences with at least one counted (mask > 0) token, float32, exact."""
  t = mask_bt.shape[1]
  lengths = jax.vmap(lambda m, s: jax.ops.segment_sum(m, s, num_segments=t + 1))(
      (mask_bt > 0).astype(jnp.float32), seq_bt)
  return jnp.sum((lengths > 0).astype(jnp.float32))


def token_weights(mask_bt: jax.Array, seq_bt: jax.Array, level: str) -> jax.Array:
  """Aggregation weights: mask (token level, DAPO) or mask / |o_i| (sequence level: each
  sequence's tokens sum to 1, so summing weighted terms gives a sum over sequences)."""
  mask = (mask_bt > 0).astype(jnp.float32)
  if level == "token":
    return mask
  return mask / jnp.maximum(sequence_sum(mask, seq_bt), 1.0)


# ---- ratios, surrogate, KL, importance weights --------------------------------------------------

def token_log_ratio(logp_bt, old_bt, mask_bt, seq_bt) -> jax.Array:
  """log π_θ/π_old per token, clamped to ±MAX_LOG_RATIO."""
  del mask_bt, seq_bt
  return jnp.clip(logp_bt - old_bt, -MAX_LOG_RATIO, MAX_LOG_RATIO)


def sequence_log_ratio(logp_bt, old_bt, mask_bt, seq_bt) -> jax.Array:
  """GSPO: the mean token log-ratio of the token's sequence (log of the geometric mean of the
  token ratios), on every token of the sequence; differentiable through every token."""
  mask = (mask_bt > 0).astype(jnp.float32)
  lr = token_log_ratio(logp_bt, old_bt, mask_bt, seq_bt) * mask
  return sequence_sum(lr, seq_bt) / jnp.maximum(sequence_sum(mask, seq_bt), 1.0)


RATIOS = {"token": token_log_ratio, "sequence": sequence_log_ratio}


def clipped_surrogate(ratio_bt, adv_bt, *, eps_low: float, eps_high: float, dual_clip: float
                      ) -> tuple[jax.Array, dict]:
  """PPO loss -min(ρA, clip(ρ, 1-eps_low, 1+eps_high)A); with dual_clip c > 1, negative-advantage
  tokens' loss is also capped at -cA (objective max(.., cA)). Returns (loss_bt, clip indicators):
  low = A < 0 and ρ below the floor, high = A > 0 and ρ above the ceiling (no gradient there),
  dual = A < 0 and ρ > c."""
  clipped = jnp.clip(ratio_bt, 1.0 - eps_low, 1.0 + eps_high)
  objective = jnp.minimum(ratio_bt * adv_bt, clipped * adv_bt)
  dual = jnp.zeros_like(ratio_bt, dtype=bool)
  if dual_clip:
    dual = (adv_bt < 0) & (ratio_bt > dual_clip)
    objective = jnp.where(adv_bt < 0, jnp.maximum(objective, dual_clip * adv_bt), objective)
  stats = {"clip_low": (adv_bt < 0) & (ratio_bt < 1.0 - eps_low),
           "clip_high": (adv_bt > 0) & (ratio_bt > 1.0 + eps_high), "clip_dual": dual}
  return -objective, stats


def k3_kl(logp_bt: jax.Array, ref_bt: jax.Array) -> jax.Array:
  """Schulman's k3 estimator of KL(π_θ ‖ π_ref) per token: e^d - d - 1, d = log π_ref - log π_θ
  (>= 0, unbiased on samples of π_θ, differentiable in log π_θ)."""
  d = jnp.clip(ref_bt - logp_bt, -MAX_LOG_RATIO, MAX_LOG_RATIO)
  return jnp.exp(d) - d - 1.0


def truncated_importance_weights(old_bt, behaviour_bt, cap: float) -> tuple[jax.Array, dict]:
  """TIS weights min(π_old/μ, cap), no gradient: correct for sampler/trainer log-prob mismatch
  and for replayed trajectories sampled by an older policy. cap = 0: all ones (off).
  Returns (weights, {"is_raw": uncapped π_old/μ, "is_capped": raw > cap})."""
  raw = jnp.exp(jnp.clip(jax.lax.stop_gradient(old_bt - behaviour_bt),
                         -MAX_LOG_RATIO, MAX_LOG_RATIO))
  if not cap:
    return jnp.ones_like(raw), {"is_raw": raw, "is_capped": jnp.zeros_like(raw, dtype=bool)}
  return jnp.minimum(raw, cap), {"is_raw": raw, "is_capped": raw > cap}


def policy_loss_terms(logp_bt, entropy_bt, batch: dict, cfg: RLConfig) -> tuple[jax.Array, dict]:
  """Per-token loss (PG surrogate x TIS weight + kl_coef k3 - entropy_coef H) and statistics.

  batch: old_logprobs, behaviour_logprobs, advantages, loss_mask, sequence_ids, and ref_logprobs
  when cfg.kl_coef > 0. Statistics are per-token float32 arrays (indicators as 0/1).
  """
  mask, seq = batch["loss_mask"], batch["sequence_ids"]
  log_ratio = RATIOS[cfg.ratio_level](logp_bt, batch["old_logprobs"], mask, seq)
  ratio = jnp.exp(log_ratio)
  pg, clip_stats = clipped_surrogate(ratio, batch["advantages"], eps_low=cfg.eps_low,
                                     eps_high=cfg.eps_high, dual_clip=cfg.dual_clip)
  weights, is_stats = truncated_importance_weights(batch["old_logprobs"],
                                                   batch["behaviour_logprobs"], cfg.tis_cap)
  loss = pg * weights - cfg.entropy_coef * entropy_bt
  # Approximate KL(π_old ‖ π_θ) as k3 on π_old's samples, a drift monitor (no gradient).
  stats = {"ratio": ratio, "kl_old": k3_kl(batch["old_logprobs"], jax.lax.stop_gradient(logp_bt)),
           "entropy": entropy_bt, **clip_stats, **is_stats}
  if cfg.kl_coef:
    kl = k3_kl(logp_bt, batch["ref_logprobs"])
    loss = loss + cfg.kl_coef * kl
    stats["kl_ref"] = kl
  stats = {k: jax.lax.stop_gradient(v).astype(jnp.float32) for k, v in stats.items()}
  return loss, stats
