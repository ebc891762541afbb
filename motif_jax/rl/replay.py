"""Mixed-policy trajectory reuse: a replay buffer of scored trajectories.

Each trajectory keeps the behaviour log-probs μ of its completion and the policy version that
sampled it. `mix` builds a batch of `rl.replay_fraction` replayed and the rest fresh
trajectories, after dropping those more than `rl.max_staleness` versions behind; the RL step
corrects for the older behaviour policy with truncated importance weights (objectives). Draws are
deterministic: a numpy Generator seeded by (seed, number of draws so far). The state is numpy
arrays plus JSON metadata (`state` / `from_state`, `save` / `load`), checkpointed with the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

_SCALARS = ("reward", "advantage", "passed", "truncated", "prompt_id", "domain", "version")


@dataclasses.dataclass(frozen=True)
class Trajectory:
  prompt_tokens: np.ndarray  # [p] int32
  completion_tokens: np.ndarray  # [c] int32
  behaviour_logprobs: np.ndarray  # [c] float32, log μ of each completion token
  reward: float
  advantage: float  # group-relative, computed when the group was scored
  passed: bool
  truncated: bool  # ran out of the token budget
  prompt_id: int
  domain: int
  version: int  # policy version (optimizer steps) that sampled it


@dataclasses.dataclass
class ReplayBuffer:
  capacity: int  # trajectories; the oldest are evicted first
  max_staleness: int  # versions
  seed: int = 0
  items: list = dataclasses.field(default_factory=list)
  draws: int = 0  # sampling calls so far (the RNG stream position)

  def add(self, trajectories: Sequence[Trajectory]) -> None:
    self.items.extend(trajectories)
    del self.items[:max(len(self.items) - self.capacity, 0)]

  def evict_stale(self, version: int) -> int:
    """Drop trajectories older than version - max_staleness; returns how many."""
    keep = [t for t in self.items if version - t.version <= self.max_staleness]
    dropped = len(self.items) - len(keep)
    self.items = keep
    return dropped

  def sample(self, n: int) -> list[Trajectory]:
    """n distinct trajectories (fewer if the buffer is smaller), deterministic, without removal."""
    rng = np.random.default_rng([self.seed, self.draws])
    self.draws += 1
    n = min(n, len(self.items))
    return [self.items[i] for i in sorted(rng.choice(len(self.items), n, replace=False))]

  def mix(self, fresh: Sequence[Trajectory], batch_size: int, replay_fraction: float,
          version: int) -> tuple[list[Trajectory], dict[str, int]]:
    """A batch of round(batch_size * replay_fraction) replayed trajectories (as many as the buffer
    holds within the staleness bound) and fresh ones for the rest; the fresh ones used enter the
    buffer afterwards. Returns (batch, counts)."""
    stale = self.evict_stale(version)
    replayed = self.sample(int(round(batch_size * replay_fraction)))
    used = list(fresh[:batch_size - len(replayed)])
    if len(used) + len(replayed) < batch_size:
      raise ValueError(f"{len(fresh)} fresh + {len(replayed)} replayed trajectories cannot fill "
                       f"a batch of {batch_size}")
    self.add(used)
    return used + replayed, {"replay/fresh": len(used), "replay/replayed": len(replayed),
                             "replay/dropped_stale": stale, "replay/size": len(self.items)}

  # ---- checkpoint state --------------------------------------------------------------------

  def state(self) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON metadata, flat numpy arrays) describing the buffer exactly."""
    meta = {"capacity": self.capacity, "max_staleness": self.max_staleness, "seed": self.seed,
            "draws": self.draws, "count": len(self.items)}
    cat = lambda name, dtype: np.concatenate(  # noqa: E731
        [np.asarray(getattr(t, name), dtype) for t in self.items] or [np.zeros(0, dtype)])
    arrays = {"prompt_tokens": cat("prompt_tokens", np.int32),
              "completion_tokens": cat("completion_tokens", np.int32),
              "behaviour_logprobs": cat("behaviour_logprobs", np.float32),
              "prompt_len": np.array([len(t.prompt_tokens) for t in self.items], np.int64),
              "completion_len": np.array([len(t.completion_tokens) for t in self.items],
                                         np.int64)}
    for name in _SCALARS:
      arrays[name] = np.array([getattr(t, name) for t in self.items],
                              np.float64 if name in ("reward", "advantage") else np.int64)
    return meta, arrays

  @classmethod
  def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "ReplayBuffer":
    p_off = np.concatenate([[0], np.cumsum(arrays["prompt_len"])])
    c_off = np.concatenate([[0], np.cumsum(arrays["completion_len"])])
    items = []
    for i in range(meta["count"]):
      scalars = {n: arrays[n][i].item() for n in _SCALARS}
      scalars["passed"], scalars["truncated"] = bool(scalars["passed"]), bool(
          scalars["truncated"])
      items.append(Trajectory(
          prompt_tokens=arrays["prompt_tokens"][p_off[i]:p_off[i + 1]],
          completion_tokens=arrays["completion_tokens"][c_off[i]:c_off[i + 1]],
          behaviour_logprobs=arrays["behaviour_logprobs"][c_off[i]:c_off[i + 1]], **scalars))
    return cls(meta["capacity"], meta["max_staleness"], meta["seed"], items, meta["draws"])

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    meta, arrays = self.state()
    np.savez(os.path.join(directory, "replay.npz"), **arrays)
    with open(os.path.join(directory, "replay.json"), "w") as f:
      json.dump(meta, f)

  @classmethod
  def load(cls, directory: str) -> "ReplayBuffer":
    with open(os.path.join(directory, "replay.json")) as f:
      meta = json.load(f)
    with np.load(os.path.join(directory, "replay.npz")) as data:
      return cls.from_state(meta, {k: data[k] for k in data.files})
