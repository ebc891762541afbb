"""KV-cache decoding equals recomputing the full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import random_params, tiny_config
from motif_jax import generate
from motif_jax.model import forward_logits
from motif_jax.model.decode import decode_step, init_cache


@pytest.mark.parametrize("attention", ["gqa", "diff", "gda"])
def test_decode_step_logits_equal_forward_logits(attention):
  cfg = tiny_config(attention)
  params = random_params(cfg)
  tokens = jax.random.randint(jax.random.key(5), (2, 9), 0, cfg.vocab_size)
  full = forward_logits(params, tokens, cfg)
  step = jax.jit(decode_step, static_argnames="cfg")
  cache = init_cache(cfg, 2, 16)
  for pos in range(9):
    logits, cache = step(params, tokens[:, pos], pos, cache, cfg=cfg)
    np.testing.assert_allclose(logits, full[:, pos], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("attention", ["gqa", "gda"])
def test_greedy_generation_equals_argmax_of_full_forward(attention):
  cfg = tiny_config(attention)
  params = random_params(cfg, scale=0.5)  # peaky logits: no near-ties in the argmax
  prompts = [[5, 17, 99, 3], [42], [7, 7, 7, 7, 7, 7, 8]]
  new = 6
  outputs = generate.generate(params, prompts, cfg, max_new_tokens=new)
  for prompt, out in zip(prompts, outputs):
    seq = list(prompt)
    for _ in range(new):
      logits = forward_logits(params, jnp.asarray([seq]), cfg)
      seq.append(int(jnp.argmax(logits[0, -1])))
    assert out == seq[len(prompt):]


def test_generation_stops_at_the_first_stop_token():
  cfg = tiny_config()
  params = random_params(cfg, scale=0.5)
  free = generate.generate(params, [[1, 2, 3]], cfg, max_new_tokens=8)[0]
  stop = free[2]
  first = free.index(stop)
  stopped = generate.generate(params, [[1, 2, 3]], cfg, max_new_tokens=8, stop_ids=[stop])[0]
  assert stopped == free[:first + 1]
  with pytest.raises(ValueError, match="no empty prompt"):
    generate.generate(params, [[]], cfg, max_new_tokens=2)
