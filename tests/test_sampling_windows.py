"""The sampler's growing KV cache (`Plan.windows`): the decode loop runs on the slots in use so
far, rounded up to a window, and gives the tokens and log-probs of a loop over the whole cache."""

import functools

import jax
import numpy as np
import pytest

from model_helpers import random_params, tiny_config
from motif_jax import sampling
from motif_jax import sampling_plan as plans
from motif_jax import sharding as shd
from motif_jax.model import decode, param_shardings

# Ragged: the 17-token prompt buckets the prefill to 32 slots; the others start far below it.
PROMPTS = [[5, 17, 99, 3], [42], [7, 7, 7, 7, 7, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]]


@functools.lru_cache(maxsize=None)
def _model(attention_kind: str):
  cfg = tiny_config(attention_kind)
  return cfg, random_params(cfg, scale=0.5)


def test_windows_grow_by_window_slots_up_to_the_cache():
  plan = sampling.make_plan(8, 1, 32, max_new_tokens=128, window_slots=64)
  assert (plan.prompt_len, plan.cache_len, plan.windows) == (32, 160, (96, 160))
  drafted = sampling.make_plan(8, 1, 32, max_new_tokens=128, draft_tokens=3, window_slots=50)
  assert drafted.windows == (82, 132, 163)  # the k spare slots of a draft block included
  assert sampling.make_plan(8, 1, 32, max_new_tokens=128, window_slots=0).windows == (160,)
  assert sampling.make_plan(2, 1, 10, max_new_tokens=4, window_slots=64).windows == (20,)
  # Default on CPU: a quarter of the new slots, a multiple of 64, at least 64, from 256 new slots.
  assert plans.auto_window_slots(128) == 64 and plans.auto_window_slots(1000) == 256
  assert sampling.make_plan(16, 8, 128, max_new_tokens=256).windows == (192, 256, 320, 384)
  assert sampling.make_plan(8, 1, 32, max_new_tokens=128).windows == (160,)
  assert sampling.make_plan(8, 1, 32, max_new_tokens=250, draft_tokens=6).windows == (
      32 + 64, 32 + 128, 32 + 192, 32 + 256)


def test_grow_cache_keeps_every_written_slot():
  cfg, _ = _model("gqa")
  cache = decode.init_cache(cfg, 2, 5)
  cache = {name: [np.random.default_rng(i).normal(size=c.shape).astype(np.float32)
                  for i, c in enumerate(layers)] for name, layers in cache.items()}
  grown = decode.grow_cache(cache, 9, cfg)
  for name, layers in grown.items():
    for old, new in zip(cache[name], layers):
      axis = 3 if name == "k" else 2  # gqa keeps K with its slots last
      assert new.shape[axis] == 9
      np.testing.assert_array_equal(np.take(new, range(5), axis=axis), old)
      assert not np.take(new, range(5, 9), axis=axis).any()


@pytest.mark.parametrize("attention_kind", ["gqa", "gda", "diff"])
@pytest.mark.parametrize("draft_tokens,temperature", [(0, 1.0), (3, 0.0)],
                         ids=["sampled", "greedy-drafts"])
def test_windowed_decoding_equals_one_window(attention_kind, draft_tokens, temperature):
  """Windows of k + 1 = the fewest slots a block needs (many windows; rows reach their window's
  end at different steps, and blocks of drafts stop short of it) give the one-window rollout."""
  cfg, params = _model(attention_kind)
  first = sampling.sample(params, PROMPTS, cfg, num_samples=2, max_new_tokens=20,
                          temperature=temperature, key=jax.random.key(3),
                          draft_tokens=draft_tokens, window_slots=0)
  stop = int(first.tokens[1, 9])  # ends row 1 mid-run, maybe others
  kw = dict(num_samples=2, max_new_tokens=20, temperature=temperature, key=jax.random.key(3),
            draft_tokens=draft_tokens, stop_ids=[stop])
  whole = sampling.sample(params, PROMPTS, cfg, window_slots=0, **kw)
  windowed = sampling.sample(params, PROMPTS, cfg, window_slots=draft_tokens + 1, **kw)
  assert len(sampling.make_plan(3, 2, 17, max_new_tokens=20, draft_tokens=draft_tokens,
                                window_slots=draft_tokens + 1).windows) > 4
  np.testing.assert_array_equal(windowed.tokens, whole.tokens)
  np.testing.assert_array_equal(windowed.lengths, whole.lengths)
  np.testing.assert_array_equal(windowed.finished, whole.finished)
  assert windowed.finished.any() and not windowed.finished.all()
  # Float summation over a different number of slots: the sampler's log-prob bound vs the trainer.
  diff = np.abs(windowed.logprobs - whole.logprobs)
  assert diff.max() <= 1e-4 and diff[whole.logprobs != 0].mean() <= 1e-5
  assert windowed.decode_steps == whole.decode_steps
  assert windowed.accepted_drafts == whole.accepted_drafts


def test_windowed_sharded_sampling_equals_one_device():
  cfg, params = _model("gda")
  kw = dict(num_samples=3, max_new_tokens=9, key=jax.random.key(4), window_slots=3)
  single = sampling.sample(params, PROMPTS, cfg, **kw)
  mesh = shd.make_mesh(shd.parse_mesh("fsdp=4,tensor=2"))
  with jax.set_mesh(mesh):
    sharded = sampling.sample(jax.device_put(params, param_shardings(cfg, mesh)), PROMPTS, cfg,
                              **kw)
  np.testing.assert_array_equal(sharded.tokens, single.tokens)
  np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-4)


def test_window_slots_too_small_for_a_draft_block_fail_before_compiling():
  cfg, params = _model("gqa")
  with pytest.raises(ValueError, match="window_slots=2 .* >= draft_tokens \\+ 1 = 4"):
    sampling.sample(params, [[1, 2]], cfg, max_new_tokens=4, key=jax.random.key(0),
                    draft_tokens=3, window_slots=2)
