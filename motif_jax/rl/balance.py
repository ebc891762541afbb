"""Multi-task balancing: per-domain sampling weights and per-domain metrics.

`rl.balance` names the rule (`WEIGHTS`):
- fixed: `rl.domain_weights` (equal when empty), normalized;
- reward: proportional to 1 - mean reward of the domain (domains the policy solves less often
  get more prompts), from the domain's reward EMA;
- learnable: proportional to the share of the domain's prompts inside the pass-rate band.
The adaptive rules keep every domain at least `rl.balance_floor`: w = floor + (1 - D floor) w'.
`allocate` turns weights into integer prompt counts per batch (largest remainder).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _normalized(x: np.ndarray) -> np.ndarray:
  x = np.maximum(np.asarray(x, np.float64), 0.0)
  total = x.sum()
  return x / total if total > 0 else np.full(len(x), 1.0 / len(x))


def with_floor(weights: np.ndarray, floor: float) -> np.ndarray:
  """Mix normalized weights with the uniform floor so every domain gets at least `floor`."""
  return floor + (1.0 - len(weights) * floor) * _normalized(weights)


def fixed_weights(fixed: Sequence[float], mean_reward: np.ndarray, learnable: np.ndarray, *,
                  floor: float) -> np.ndarray:
  del mean_reward, learnable, floor
  return _normalized(np.asarray(fixed))


def reward_weights(fixed, mean_reward: np.ndarray, learnable, *, floor: float) -> np.ndarray:
  """∝ 1 - mean reward (rewards in [0, 1]); NaN (no data yet) counts as 0 reward."""
  del fixed, learnable
  return with_floor(1.0 - np.clip(np.nan_to_num(mean_reward, nan=0.0), 0.0, 1.0), floor)


def learnable_weights(fixed, mean_reward, learnable: np.ndarray, *, floor: float) -> np.ndarray:
  """∝ the share of the domain's prompts inside the pass-rate band."""
  del fixed, mean_reward
  return with_floor(np.asarray(learnable, np.float64), floor)


WEIGHTS = {"fixed": fixed_weights, "reward": reward_weights, "learnable": learnable_weights}


def allocate(total: int, weights: np.ndarray) -> np.ndarray:
  """Integer counts summing to `total`, proportional to weights (largest remainder, ties to the
  lower domain index)."""
  exact = _normalized(weights) * total
  counts = np.floor(exact).astype(np.int64)
  order = np.argsort(-(exact - counts), kind="stable")
  counts[order[:total - counts.sum()]] += 1
  return counts


def learnable_share(active_p: np.ndarray, domain_p: np.ndarray, num_domains: int) -> np.ndarray:
  """[D] share of each domain's prompts that are active (inside the band or unseen)."""
  totals = np.bincount(domain_p, minlength=num_domains)
  active = np.bincount(domain_p, weights=active_p.astype(np.float64), minlength=num_domains)
  return active / np.maximum(totals, 1)


def update_reward_ema(ema_d: np.ndarray, rewards, domains, *, weight: float) -> np.ndarray:
  """Per-domain EMA of the mean reward; domains without samples keep their value, NaN = unseen."""
  d = len(ema_d)
  counts = np.bincount(domains, minlength=d)
  means = np.bincount(domains, weights=np.asarray(rewards, np.float64), minlength=d) / np.maximum(
      counts, 1)
  mixed = np.where(np.isnan(ema_d), means, (1 - weight) * ema_d + weight * means)
  return np.where(counts > 0, mixed, ema_d)


def domain_metrics(rewards, passed, lengths, domains, names: Sequence[str]) -> dict[str, float]:
  """Per-domain mean reward, pass rate, response length and sample count of a rollout batch."""
  out = {}
  for d, name in enumerate(names):
    sel = np.asarray(domains) == d
    n = int(sel.sum())
    out[f"domain/{name}/samples"] = n
    if n:
      out[f"domain/{name}/reward"] = float(np.mean(np.asarray(rewards)[sel]))
      out[f"domain/{name}/pass_rate"] = float(np.mean(np.asarray(passed)[sel]))
      out[f"domain/{name}/response_length"] = float(np.mean(np.asarray(lengths)[sel]))
  return out
