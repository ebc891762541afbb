"""Shared test helpers: tiny configs and randomized parameters."""

import dataclasses

import jax
import jax.numpy as jnp

from configs import tiny
from motif_jax.model import ModelConfig, init_params


def tiny_config(attention: str = "gda", **overrides) -> ModelConfig:
  """The `tiny:smoke` model (gda + PolyNorm), or its gqa / diff relatives with SwiGLU."""
  cfg = ModelConfig.from_config_dict(tiny.get_config("smoke" if attention == "gda" else
                                                     "smoke,gqa").model)
  if attention == "diff":
    cfg = dataclasses.replace(cfg, attention="diff")
  return dataclasses.replace(cfg, **overrides)


def random_params(cfg: ModelConfig, seed: int = 0, scale: float = 0.1):
  """Initialized params plus noise on every leaf, so norms, biases and λs are not trivial."""
  params = init_params(jax.random.key(seed), cfg)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  noisy = [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
           for leaf, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, noisy)


def random_tokens(cfg: ModelConfig, batch: int, length: int, seed: int = 2):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, cfg.vocab_size, jnp.int32)
