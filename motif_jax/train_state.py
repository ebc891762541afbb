"""TrainState: arrays only (step, params, optimizer state, RNG key data, bad-step counters).

The optimizer transformation and configs are bound at jit time, never stored here, so Orbax
checkpoints exactly what is trained.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken (skipped steps included)
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32 key data; per-step keys are fold_in(rng, step)
  bad_steps: jax.Array  # int32: consecutive steps skipped for non-finite gradients
  skipped_steps: jax.Array  # int32: all skipped steps


def init_train_state(params: Any, optimizer: optax.GradientTransformation,
                     seed: int = 0) -> TrainState:
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, opt_state=optimizer.init(params),
                    rng=jax.random.key_data(jax.random.key(seed)), bad_steps=zero,
                    skipped_steps=zero)


def step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
