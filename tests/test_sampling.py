"""The sampler: KV-cache decoding equals the full forward, per-row positions, shared prefill,
truncation, stop semantics, behaviour log-probs equal to the trainer's, sharded == one device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_helpers import random_params, tiny_config
from motif_jax import losses, sampling
from motif_jax import sharding as shd
from motif_jax.model import attention, forward, forward_logits, layers, param_shardings
from motif_jax.model.decode import decode_params, decode_step, init_cache, prefill

_forward = jax.jit(forward, static_argnames="cfg")
PROMPTS = [[5, 17, 99, 3], [42], [7, 7, 7, 7, 7, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]]


@functools.lru_cache(maxsize=None)
def _model(attention_kind: str, scale: float):
  """(cfg, params), built once per module run (parameter init compiles per leaf shape)."""
  cfg = tiny_config(attention_kind)
  return cfg, random_params(cfg, scale=scale)


@pytest.fixture(scope="module", params=["gqa", "gda"])
def model(request):
  return _model(request.param, 0.5)  # peaky logits: no near-ties in an argmax


def _greedy(params, cfg, prompts=PROMPTS, **kw):
  kw = {"max_new_tokens": 6, **kw}
  return sampling.sample(params, prompts, cfg, temperature=0.0, key=jax.random.key(0), **kw)


@pytest.mark.parametrize("attention_kind,dense_keys", [("gqa", 1024), ("diff", 1024),
                                                      ("gda", 1024), ("gda", 0)],
                         ids=["gqa", "diff", "gda", "gda-flash"])
def test_chunked_prefill_and_ragged_decode_steps_equal_forward(attention_kind, dense_keys,
                                                               monkeypatch):
  """Prefill right-padded prompts in chunks of 4 (dense core, or the flash kernel with a query
  offset), then decode steps with each row at its own position: the last prompt token's hidden
  state and every step's logits equal the full forward's."""
  monkeypatch.setattr(attention, "DENSE_PREFILL_KEYS", dense_keys)
  cfg, params = _model(attention_kind, 0.1)
  tokens = jax.random.randint(jax.random.key(6), (2, 14), 0, cfg.vocab_size)
  lengths = jnp.array([10, 7])
  full = forward_logits(params, tokens, cfg)
  run = jax.jit(lambda p, t, n: prefill(p, t, n, init_cache(cfg, 2, 16), cfg, chunk=4))
  h_last, cache = run(params, jnp.where(jnp.arange(11)[None] < lengths[:, None], tokens[:, :11],
                                        0), lengths)
  np.testing.assert_allclose(h_last, _forward(params, tokens, cfg)[jnp.arange(2), lengths - 1],
                             rtol=2e-5, atol=2e-5)
  step = jax.jit(decode_step, static_argnames="cfg")
  for i in range(4):
    pos = lengths + i
    logits, cache = step(params, tokens[jnp.arange(2), pos], pos, cache, cfg=cfg)
    np.testing.assert_allclose(logits, full[jnp.arange(2), pos], rtol=2e-5, atol=2e-5)


def test_greedy_equals_stepwise_argmax_of_full_forward(model):
  cfg, params = model
  rollouts = _greedy(params, cfg)
  for i, prompt in enumerate(PROMPTS):
    seq = np.zeros((1, 32), np.int32)  # one padded width: causal, so padding changes nothing
    seq[0, :len(prompt)] = prompt
    for n in range(len(prompt), len(prompt) + 6):
      seq[0, n] = int(jnp.argmax(forward_logits(params, seq, cfg)[0, n - 1]))
    assert rollouts.tokens[i].tolist() == seq[0, len(prompt):len(prompt) + 6].tolist()
  assert rollouts.lengths.tolist() == [6, 6, 6] and not rollouts.finished.any()


@pytest.fixture(scope="module")
def motif_model():
  return _model("gda", 0.5)


def test_ragged_prompts_decode_as_each_prompt_alone(motif_model):
  cfg, params = motif_model
  together = _greedy(params, cfg)
  for i, prompt in enumerate(PROMPTS):
    alone = _greedy(params, cfg, [prompt])
    np.testing.assert_array_equal(alone.tokens[0], together.tokens[i])
    np.testing.assert_allclose(alone.logprobs[0], together.logprobs[i], atol=2e-5)


def test_top_k_1_equals_greedy_and_samples_share_a_prompt(motif_model):
  cfg, params = motif_model
  greedy = _greedy(params, cfg, num_samples=3)
  assert greedy.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  for i in range(3):  # greedy samples of one prompt are identical
    assert (greedy.tokens[3 * i:3 * i + 3] == greedy.tokens[3 * i]).all()
  top1 = sampling.sample(params, PROMPTS, cfg, num_samples=3, max_new_tokens=6, top_k=1,
                         key=jax.random.key(1))
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)
  np.testing.assert_allclose(top1.truncated_logprobs, 0.0, atol=1e-6)  # all mass on one token


def test_stop_ids_end_rows_inside_the_jitted_loop(motif_model):
  cfg, params = motif_model
  free = _greedy(params, cfg)
  assert free.decode_steps == 6
  # Every row's first token is a stop id: the loop runs one iteration and stops.
  first = sorted({int(t) for t in free.tokens[:, 0]})
  stopped = _greedy(params, cfg, stop_ids=first)
  assert stopped.decode_steps == 1
  assert stopped.lengths.tolist() == [1, 1, 1] and stopped.finished.all()
  assert stopped.finish_reasons == ["stop"] * 3
  assert (stopped.tokens[:, 1:] == 0).all() and (stopped.logprobs[:, 1:] == 0).all()
  # Row 0 stops at its third token; a stop id no row emits leaves the others at the budget.
  stop = int(free.tokens[0, 2])
  if stop in free.tokens[0, :2] or stop in free.tokens[1:]:
    pytest.skip("token ids repeat in this random model")
  partial = _greedy(params, cfg, stop_ids=[stop])
  assert partial.lengths.tolist() == [3, 6, 6]
  assert partial.finished.tolist() == [True, False, False]
  np.testing.assert_array_equal(partial.tokens[0], list(free.tokens[0, :3]) + [0, 0, 0])
  np.testing.assert_array_equal(partial.tokens[1:], free.tokens[1:])
  np.testing.assert_allclose(partial.logprobs[0, :3], free.logprobs[0, :3], atol=1e-6)


@functools.partial(jax.jit, static_argnames=("cfg", "temperature"))
def _trainer_token_logprobs(params, arrays, *, cfg, temperature):
  hidden = forward(params, arrays["tokens"], cfg, segment_ids=arrays["segments"],
                   positions=arrays["positions"])
  logp, _ = losses.token_logprobs_and_entropy(params, hidden, arrays["targets"], arrays["mask"],
                                              cfg, temperature=temperature)
  return logp


def _trainer_logprobs(params, cfg, rollouts, temperature, packed):
  """log π(token) for every generated token, recomputed as the RL trainer would: forward over
  prompt + completion rows (one sequence per row, or all packed into one row with segment ids
  and restarting positions), then losses.token_logprobs_and_entropy."""
  seqs = [(r, PROMPTS[p] + rollouts.tokens[r, :n].tolist())
          for r, (p, n) in enumerate(zip(rollouts.prompt_index, rollouts.lengths))]
  rows = [seqs] if packed else [[s] for s in seqs]
  width = max(sum(len(s) for _, s in row) for row in rows)
  arrays = {k: np.zeros((len(rows), width), np.int32)
            for k in ("tokens", "targets", "mask", "segments", "positions")}
  first_target = {}  # completion r -> (row, column predicting its first generated token)
  for i, row in enumerate(rows):
    col = 0
    for j, (r, s) in enumerate(row):
      n, gen = len(s), int(rollouts.lengths[r])
      arrays["tokens"][i, col:col + n] = s
      arrays["targets"][i, col:col + n - 1] = s[1:]
      arrays["mask"][i, col + n - 1 - gen:col + n - 1] = 1
      arrays["segments"][i, col:col + n] = j + 1
      arrays["positions"][i, col:col + n] = np.arange(n)
      first_target[r] = (i, col + n - 1 - gen)
      col += n
  logp = _trainer_token_logprobs(params, arrays, cfg=cfg, temperature=temperature)
  out = np.zeros_like(rollouts.logprobs)
  for r, (i, start) in first_target.items():
    n = rollouts.lengths[r]
    out[r, :n] = np.asarray(logp)[i, start:start + n]
  return out


@pytest.mark.parametrize("attention_kind", ["gqa", "gda"])
def test_sampler_logprobs_equal_the_trainers(attention_kind):
  """Packed and unpacked trainer rows, top-p sampling at temperature 0.7 (log-probs of order
  -1 to -10, as a trained policy's: the default random_params scale)."""
  cfg, params = _model(attention_kind, 0.1)
  temperature = 0.7
  rollouts = sampling.sample(params, PROMPTS, cfg, num_samples=2, max_new_tokens=8,
                             temperature=temperature, top_p=0.9, key=jax.random.key(3))
  for packed in (False, True):
    trainer = _trainer_logprobs(params, cfg, rollouts, temperature, packed)
    delta = np.abs(trainer - rollouts.logprobs)
    assert delta.mean() <= 1e-5 and delta.max() <= 1e-4, (packed, delta.mean(), delta.max())
  # The top-p distribution actually sampled puts more mass on each kept token.
  assert (rollouts.truncated_logprobs >= rollouts.logprobs - 1e-6).all()


def test_top_p_and_top_k_keep_exactly_the_nucleus():
  probs = np.array([0.05, 0.5, 0.1, 0.2, 0.15], np.float32)
  logits = jnp.log(jnp.asarray(probs))[None]
  # Descending 0.5, 0.2, 0.15 | 0.1, 0.05: mass before 0.15 is 0.7 < 0.75, before 0.1 is 0.85.
  kept = np.isfinite(np.asarray(sampling.truncate_logits(logits, top_k=0, top_p=0.75)))[0]
  assert kept.tolist() == [False, True, False, True, True]
  kept = np.isfinite(np.asarray(sampling.truncate_logits(logits, top_k=2, top_p=1.0)))[0]
  assert kept.tolist() == [False, True, False, True, False]
  # Draws: only nucleus tokens, at their renormalized frequencies, with matching log-probs.
  plan = sampling.Plan(prompt_rows=1, rows=1, prompt_len=16, cache_len=17, max_new_tokens=1,
                        temperature=1.0, top_p=0.75, top_k=0, prefill_chunk=16)
  draws = 4000
  keys = jax.random.split(jax.random.key(0), draws)
  tokens, full, truncated = sampling.select_tokens(jnp.repeat(logits, draws, axis=0), keys, plan)
  counts = np.bincount(np.asarray(tokens), minlength=5) / draws
  np.testing.assert_allclose(counts, [0, 0.5 / 0.85, 0, 0.2 / 0.85, 0.15 / 0.85], atol=0.03)
  tokens = np.asarray(tokens)
  np.testing.assert_allclose(full, np.log(probs[tokens]), rtol=1e-5)
  np.testing.assert_allclose(truncated, np.log(probs[tokens] / 0.85), rtol=1e-5)


@pytest.mark.parametrize("mesh_shape", ["fsdp=4,tensor=2", pytest.param(
    "data=2,fsdp=2,tensor=2", marks=pytest.mark.slow)])
def test_sharded_sampling_equals_one_device(mesh_shape):
  cfg, params = _model("gda", 0.5)
  kw = dict(num_samples=3, max_new_tokens=5, key=jax.random.key(4), top_k=50)
  single = sampling.sample(params, PROMPTS, cfg, **kw)
  mesh = shd.make_mesh(shd.parse_mesh(mesh_shape))
  sharded_params = jax.device_put(params, param_shardings(cfg, mesh))
  with jax.set_mesh(mesh):
    sharded = sampling.sample(sharded_params, PROMPTS, cfg, **kw)
  np.testing.assert_array_equal(sharded.tokens, single.tokens)
  np.testing.assert_array_equal(sharded.lengths, single.lengths)
  np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-4)  # all-reduce order
  assert sharded.tokens.shape == (9, 5)  # rows padded to the batch shards inside, not outside
  assert len({tuple(r) for r in single.tokens[6:9]}) > 1  # temperature 1: samples differ


def test_sample_rejects_bad_arguments():
  cfg, params = _model("gqa", 0.5)
  kw = dict(max_new_tokens=2, key=jax.random.key(0))
  with pytest.raises(ValueError, match="no empty prompt"):
    sampling.sample(params, [[1], []], cfg, **kw)
  with pytest.raises(ValueError, match="top_p"):
    sampling.sample(params, [[1]], cfg, top_p=0.0, **kw)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    sampling.sample(params, [[cfg.vocab_size]], cfg, **kw)
  with pytest.raises(ValueError, match="num_samples"):
    sampling.sample(params, [[1]], cfg, num_samples=0, **kw)


@pytest.mark.parametrize("mlp", ["swiglu", "polynorm"])
def test_decode_params_fuse_gate_and_up_without_changing_the_mlp(mlp):
  """decode_params stacks w_gate and w_up into one [d, 2, f] matrix (one dot per decode step);
  the MLP computes the same values from it as from the two matrices."""
  cfg = tiny_config("gqa", mlp=mlp, dtype="float32")
  params = random_params(cfg, scale=0.5)
  fused = decode_params(params, cfg)["layers"][1]["mlp"]
  assert "w_gate_up" in fused and "w_gate" not in fused and "w_up" not in fused
  plain = jax.tree.map(lambda w: w[1], params["layers"]["mlp"])
  np.testing.assert_array_equal(fused["w_gate_up"][:, 0], plain["w_gate"])
  np.testing.assert_array_equal(fused["w_gate_up"][:, 1], plain["w_up"])
  x_btd = jax.random.normal(jax.random.key(1), (2, 3, cfg.d_model))
  want = np.asarray(layers.mlp(x_btd, plain, cfg))
  # fp32 rounding of a differently blocked dot, relative to the output's scale
  np.testing.assert_allclose(layers.mlp(x_btd, fused, cfg), want, rtol=1e-5,
                             atol=4e-6 * np.abs(want).max())
