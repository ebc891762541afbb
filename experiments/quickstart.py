"""Quickstart: the tiny Motif-architecture model on CPU.

  make quickstart            # = python -m experiments.quickstart --workdir=/tmp/motif_quickstart

Today it builds the tiny model (grouped differential attention + PolyNorm), initializes it,
runs one jitted forward and backward pass on a random batch and reports the loss, parameter
count and timing. Generating the toy corpus, filtering it and SFT training join here as those
stages land (see the README's roadmap).
"""

import json
import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from configs import tiny
from motif_jax.model import ModelConfig, count_params, forward_logits, init_params

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/motif_quickstart", "Output directory.")


def _loss(params, tokens_bt, cfg):
  logits_btv = forward_logits(params, tokens_bt[:, :-1], cfg)
  logp_btv = jax.nn.log_softmax(logits_btv, axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp_btv, tokens_bt[:, 1:, None], axis=-1))


def main(argv):
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  config = tiny.get_config()
  cfg = ModelConfig.from_config_dict(config.model)
  print(f"devices: {jax.devices()}")
  params = init_params(jax.random.key(0), cfg)
  print(f"tiny model: {count_params(params):,} parameters ({cfg.attention} attention, "
        f"{cfg.mlp} MLP, {cfg.num_layers} layers)")
  tokens = jax.random.randint(jax.random.key(1), (8, 129), 0, cfg.vocab_size)
  step = jax.jit(jax.value_and_grad(_loss), static_argnums=2)
  start = time.perf_counter()
  loss, _ = jax.block_until_ready(step(params, tokens, cfg))
  compiled = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(step(params, tokens, cfg))
  print(f"forward+backward on 8x128 tokens: loss {float(loss):.4f} (uniform would be "
        f"{float(jnp.log(cfg.vocab_size)):.4f}); first call {compiled:.1f}s, "
        f"then {time.perf_counter() - start:.3f}s")
  with open(os.path.join(_WORKDIR.value, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2)
  print(f"resolved config written to {_WORKDIR.value}/config.json")
  print("not yet: toy-corpus generation, data filtering and SFT training join the quickstart "
        "when those stages land.")


if __name__ == "__main__":
  app.run(main)
