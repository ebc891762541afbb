"""RLConfig: the typed, validated boundary for `config.rl` (defaults live in configs/rl.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from motif_jax import typed_config

ADVANTAGES = ("grpo", "mean")  # mean/std (GRPO) | mean only (Dr.GRPO)
ADVANTAGE_SCALES = ("group", "domain")  # where GRPO's std is taken
LEVELS = ("token", "sequence")
OLD_POLICIES = ("recompute", "behaviour")
BALANCE_MODES = ("fixed", "reward", "learnable")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """Objective, filtering, replay and balancing settings; see configs/rl.py for each field."""

  group_size: int
  advantage: str
  advantage_scale: str
  negative_weight: float
  eps_low: float
  eps_high: float
  dual_clip: float
  loss_level: str
  ratio_level: str
  kl_coef: float
  entropy_coef: float
  sft_coef: float
  tis_cap: float
  old_policy: str
  temperature: float
  updates_per_rollout: int
  pass_rate_low: float
  pass_rate_high: float
  pass_rate_ema: float
  offline_samples: int
  offline_prompts: int
  online_filter: bool
  replay_fraction: float
  max_staleness: int
  replay_capacity: int
  domains: str
  balance: str
  domain_weights: str
  balance_floor: float
  init_from: str

  def __post_init__(self):
    choices = dict(advantage=ADVANTAGES, advantage_scale=ADVANTAGE_SCALES, loss_level=LEVELS,
                   ratio_level=LEVELS, old_policy=OLD_POLICIES, balance=BALANCE_MODES)
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f"rl.{name}={getattr(self, name)!r} must be one of {allowed}")
    for name in ("group_size", "updates_per_rollout", "offline_samples", "replay_capacity"):
      if getattr(self, name) < 1:
        raise ValueError(f"rl.{name}={getattr(self, name)!r} must be >= 1")
    for name in ("eps_low", "eps_high", "kl_coef", "entropy_coef", "sft_coef", "max_staleness",
                 "offline_prompts"):
      if getattr(self, name) < 0:
        raise ValueError(f"rl.{name}={getattr(self, name)!r} must be >= 0")
    if not 0 <= self.negative_weight <= 1:
      raise ValueError(f"rl.negative_weight={self.negative_weight} must be in [0, 1]")
    if not self.eps_low < 1:
      raise ValueError(f"rl.eps_low={self.eps_low} must be < 1 (the ratio floor 1 - eps_low)")
    if self.dual_clip and self.dual_clip <= 1:
      raise ValueError(f"rl.dual_clip={self.dual_clip} must be 0 (off) or > 1")
    if self.tis_cap and self.tis_cap < 1:
      raise ValueError(f"rl.tis_cap={self.tis_cap} must be 0 (off) or >= 1")
    if not self.temperature > 0:
      raise ValueError(f"rl.temperature={self.temperature} must be positive")
    if not 0 <= self.pass_rate_low <= self.pass_rate_high <= 1:
      raise ValueError(f"rl.pass_rate_low={self.pass_rate_low}, rl.pass_rate_high="
                       f"{self.pass_rate_high}: need 0 <= low <= high <= 1")
    for name in ("pass_rate_ema", "replay_fraction"):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f"rl.{name}={getattr(self, name)} must be in [0, 1]")
    if not self.domain_names:
      raise ValueError("rl.domains='' must name at least one domain (comma-separated)")
    weights = self.fixed_weights
    if len(weights) != len(self.domain_names) or min(weights) < 0 or not sum(weights) > 0:
      raise ValueError(f"rl.domain_weights={self.domain_weights!r} needs one "
                       f"non-negative weight per domain of rl.domains={self.domains!r}")
    if not 0 <= self.balance_floor * len(self.domain_names) <= 1:
      raise ValueError(f"rl.balance_floor={self.balance_floor} must be in [0, 1/num_domains]")

  @property
  def domain_names(self) -> tuple[str, ...]:
    return tuple(d.strip() for d in self.domains.split(",") if d.strip())

  @property
  def fixed_weights(self) -> tuple[float, ...]:
    """rl.domain_weights as floats; '' = equal weights."""
    if not self.domain_weights.strip():
      return (1.0,) * len(self.domain_names)
    try:
      return tuple(float(w) for w in self.domain_weights.split(","))
    except ValueError:
      raise ValueError(f"rl.domain_weights={self.domain_weights!r} must be comma-separated "
                       "numbers") from None

  @classmethod
  def from_config_dict(cls, config: Mapping[str, Any]) -> "RLConfig":
    return typed_config.build(cls, config, "rl")
