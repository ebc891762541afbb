"""The sampler benchmark's floors measure what they say (motif_jax/bench/sampler.py)."""

import jax
import numpy as np
import pytest

from configs import common
from motif_jax import sampling
from motif_jax.bench import sampler as bench
from motif_jax.model import ModelConfig


def _llama(**overrides) -> ModelConfig:
  return ModelConfig.from_config_dict(common.model(**{**bench.LLAMA, **overrides}))


def _reference_attention(q_bnh, k_bkhs, v_bksh, valid_slots):
  """Dense numpy gqa over the first `valid_slots` slots: query head j reads KV head j // g."""
  b, n, h = q_bnh.shape
  g = n // k_bkhs.shape[1]
  out = np.zeros_like(q_bnh)
  for row in range(b):
    for j in range(n):
      k_hs = k_bkhs[row, j // g, :, :valid_slots]
      scores = q_bnh[row, j] @ k_hs / np.sqrt(h)
      p = np.exp(scores - scores.max())
      out[row, j] = (p / p.sum()) @ v_bksh[row, j // g, :valid_slots]
  return out


def test_attention_floor_reads_the_samplers_cache_and_attends_to_the_valid_slots():
  cfg = _llama(num_layers=2)
  batch, prompt_len, steps = 3, 20, 2
  run, slots = bench.attention_floor(cfg, batch, prompt_len, steps)
  # The cache the sampler allocates for this shape: prefill bucket 32 + 2 new tokens.
  assert slots == sampling.make_plan(batch, 1, prompt_len, max_new_tokens=steps).cache_len == 34
  ks, vs, q_b1nh = (jax.tree.map(np.asarray, x) for x in bench.attention_floor_inputs(
      cfg, batch, slots))
  q_bnh = q_b1nh[:, 0].astype(np.float64)
  for step in range(steps):  # step i sees slots 0 .. prompt_len + i; layers chained
    for k_bkhs, v_bksh in zip(ks, vs):
      q_bnh = _reference_attention(q_bnh, k_bkhs.astype(np.float64), v_bksh.astype(np.float64),
                                   prompt_len + step + 1)
  np.testing.assert_allclose(np.asarray(run())[:, 0], q_bnh, rtol=2e-5, atol=2e-5)


def test_attention_floor_refuses_other_attention_cores():
  with pytest.raises(ValueError, match="gqa"):
    bench.attention_floor(_llama(attention="diff"), 2, 8, 2)
