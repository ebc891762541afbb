"""N-gram speculative decoding: drafts by prompt lookup (hand-checked), verification that keeps
the sampling distribution exact, and a sampler whose tokens and log-probs do not change with
drafts (greedy), equal the trainer's (sampled) and follow the model's distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from motif_jax import sampling, speculative
from motif_jax.model import forward_logits
from motif_jax.model.decode import decode_block, init_cache, prefill
from test_sampling import PROMPTS, _model, _trainer_logprobs


def _drafts(history, last, k=4, ngram=3):
  return np.asarray(speculative.ngram_drafts(jnp.asarray([history], jnp.int32),
                                             jnp.asarray([last], jnp.int32), k, ngram))[0].tolist()


def test_ngram_drafts_continue_the_latest_longest_match():
  # Last 3 tokens (5, 6, 7) occur at 0..2 and 4..6: the later one (s = 6) continues with 1, 2.
  assert _drafts([5, 6, 7, 9, 5, 6, 7, 1, 2, 3, 5, 6, 7], 12, k=2) == [1, 2]
  # A longer match beats a later shorter one: (8, 7) matches at s = 1 only; 7 alone at s = 4.
  assert _drafts([8, 7, 4, 4, 7, 9, 8, 7], 7, k=2, ngram=2) == [4, 4]
  assert _drafts([8, 7, 4, 4, 7, 9, 8, 7], 7, k=2, ngram=1) == [9, 8]
  # A continuation that reaches the end repeats the period: ... 1 2 3 1 2 3 -> 1 2 3 1.
  assert _drafts([9, 1, 2, 3, 1, 2, 3], 6) == [1, 2, 3, 1]
  assert _drafts([4, 4, 4], 2) == [4, 4, 4, 4]
  # No earlier occurrence of the last token: propose it again. Slots after `last` are ignored.
  assert _drafts([1, 2, 3, 2, 3], 2) == [3, 3, 3, 3]


@pytest.mark.parametrize("attention_kind", ["gqa", "gda", "diff"])
def test_decode_block_at_ragged_positions_equals_forward(attention_kind):
  """Prefill ragged prompts, then blocks of 3 tokens per row at each row's own positions: every
  block position's logits equal the full forward's, and a second block continues the cache."""
  cfg, params = _model(attention_kind, 0.1)
  tokens = jax.random.randint(jax.random.key(7), (2, 16), 0, cfg.vocab_size)
  lengths = jnp.array([9, 5])
  full = forward_logits(params, tokens, cfg)
  h_last, cache = jax.jit(lambda p, t, n: prefill(p, t, n, init_cache(cfg, 2, 16), cfg, chunk=4))(
      params, jnp.where(jnp.arange(9)[None] < lengths[:, None], tokens[:, :9], 0), lengths)
  del h_last
  step = jax.jit(decode_block, static_argnames="cfg")
  for offset in (0, 3):
    pos = lengths + offset
    block = tokens[jnp.arange(2)[:, None], pos[:, None] + jnp.arange(3)[None]]
    logits, cache = step(params, block, pos, cache, cfg=cfg)
    want = full[jnp.arange(2)[:, None], pos[:, None] + jnp.arange(3)[None]]
    np.testing.assert_allclose(logits, want, rtol=2e-5, atol=2e-5)


def test_accepted_prefix_counts_leading_acceptances():
  accept = jnp.array([[1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]], bool)
  assert speculative.accepted_prefix(accept).tolist() == [2, 0, 4]


def test_verification_then_residual_sampling_draws_from_the_model_distribution():
  """Accept draft d with probability p(d), else sample p without d: the emitted token is
  distributed as p. Without removing d after a rejection it would come out at p(d)(2 - p(d))."""
  probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32)
  draws = 20000
  plan = sampling.make_plan(1, 1, 4, max_new_tokens=1, temperature=1.0, draft_tokens=1)
  logits = jnp.repeat(jnp.log(jnp.asarray(probs))[None], draws, axis=0)
  drafts = jnp.zeros((draws, 1), jnp.int32)  # the draft is token 0
  keys = jax.random.split(jax.random.key(0), (2, draws))
  accept, logp, _ = sampling.verify_drafts(logits[:, None], drafts, keys[0], plan)
  np.testing.assert_allclose(logp, np.log(0.5), rtol=1e-6)
  residual, _, _ = sampling.select_tokens(logits, keys[1], plan, exclude_b=drafts[:, 0])
  assert not (np.asarray(residual) == 0).any()
  emitted = np.where(np.asarray(accept[:, 0]), 0, np.asarray(residual))
  np.testing.assert_allclose(np.bincount(emitted, minlength=5) / draws, probs, atol=0.012)


@pytest.mark.parametrize("attention_kind", ["gqa", "gda", "diff"])
def test_greedy_with_drafts_emits_the_same_tokens(attention_kind):
  """Ragged prompts, a stop id that ends one row mid-block and the budget ending the others."""
  cfg, params = _model(attention_kind, 0.5)
  kw = dict(temperature=0.0, key=jax.random.key(0), max_new_tokens=12)
  plain = sampling.sample(params, PROMPTS, cfg, **kw)
  stop = int(plain.tokens[0, 5])
  for stop_ids in ((), (stop,)):
    base = sampling.sample(params, PROMPTS, cfg, stop_ids=stop_ids, **kw)
    for k in (1, 3):
      drafted = sampling.sample(params, PROMPTS, cfg, stop_ids=stop_ids, draft_tokens=k, **kw)
      np.testing.assert_array_equal(drafted.tokens, base.tokens)
      np.testing.assert_array_equal(drafted.lengths, base.lengths)
      np.testing.assert_array_equal(drafted.finished, base.finished)
      np.testing.assert_allclose(drafted.logprobs, base.logprobs, atol=1e-4)  # block vs step
      assert drafted.decode_steps <= base.decode_steps


def _copy_model(gain: float):
  """The gqa test model nudged to repeat its input token: attention and MLP outputs scaled down,
  unembedding = the normalized embedding table times `gain` (higher = more repetitive)."""
  cfg, params = _model("gqa", 0.1)
  layers = dict(params["layers"])
  layers["attn"] = {**layers["attn"], "wo": 0.1 * layers["attn"]["wo"]}
  layers["mlp"] = {**layers["mlp"], "w_down": 0.1 * layers["mlp"]["w_down"]}
  embed = params["embed"]
  unembed = gain * (embed / jnp.linalg.norm(embed, axis=1, keepdims=True)).T
  return cfg, {**params, "layers": layers, "unembed": unembed}


def test_drafts_cut_decode_steps_on_repetitive_text():
  """A model that repeats itself: its drafts are accepted, and each accepted draft is one decode
  step saved for its row, with the same tokens."""
  cfg, params = _copy_model(5.0)
  kw = dict(temperature=0.0, max_new_tokens=24, key=jax.random.key(0))
  plain = sampling.sample(params, [[3, 4, 5, 6] * 3], cfg, **kw)
  drafted = sampling.sample(params, [[3, 4, 5, 6] * 3], cfg, draft_tokens=3, **kw)
  np.testing.assert_array_equal(drafted.tokens, plain.tokens)
  assert plain.decode_steps == 24 and drafted.accepted_drafts >= 12
  assert drafted.decode_steps == plain.decode_steps - drafted.accepted_drafts  # one row


@pytest.mark.parametrize("attention_kind", ["gqa", "gda"])
def test_sampled_logprobs_with_drafts_equal_the_trainers(attention_kind):
  cfg, params = _model(attention_kind, 0.1)
  rollouts = sampling.sample(params, PROMPTS, cfg, num_samples=2, max_new_tokens=8,
                             temperature=0.7, key=jax.random.key(3), draft_tokens=2)
  for packed in (False, True):
    trainer = _trainer_logprobs(params, cfg, rollouts, 0.7, packed)
    delta = np.abs(trainer - rollouts.logprobs)
    assert delta.mean() <= 1e-5 and delta.max() <= 1e-4, (packed, delta.mean(), delta.max())


def test_sampling_with_drafts_follows_the_models_joint_distribution():
  """The first two sampled tokens against their exact joint p(t0) p(t1 | t0) from the full
  forward: a chi-square test over the likely pairs (the rest pooled), with drafts accepted often
  enough to matter (a model that tends to repeat itself)."""
  cfg, params = _copy_model(2.0)
  prompt = [3, 4, 5, 6] * 3
  rows = 3000
  out = sampling.sample(params, [prompt], cfg, num_samples=rows, max_new_tokens=2,
                        temperature=1.0, key=jax.random.key(5), draft_tokens=2)
  assert out.accepted_drafts > rows // 10
  v = cfg.vocab_size
  p0 = np.asarray(jax.nn.softmax(forward_logits(params, jnp.asarray([prompt]), cfg)[0, -1]))
  seqs = jnp.concatenate([jnp.tile(jnp.asarray(prompt)[None], (v, 1)),
                          jnp.arange(v)[:, None]], axis=1)
  p1 = np.asarray(jax.nn.softmax(forward_logits(params, seqs, cfg)[:, -1], axis=-1))
  expected = (p0[:, None] * p1).ravel() * rows
  observed = np.bincount(out.tokens[:, 0] * v + out.tokens[:, 1], minlength=v * v)
  cells = expected >= 5
  exp_cells = np.append(expected[cells], expected[~cells].sum())
  obs_cells = np.append(observed[cells], observed[~cells].sum())
  stat = float(np.sum((obs_cells - exp_cells) ** 2 / exp_cells))
  df = len(exp_cells) - 1
  bound = df * (1 - 2 / (9 * df) + 3.09 * np.sqrt(2 / (9 * df))) ** 3  # chi2 0.999 quantile
  assert df >= 5 and stat < bound, (stat, bound, df)


def test_sample_rejects_bad_draft_settings():
  cfg, params = _model("gqa", 0.5)
  kw = dict(max_new_tokens=2, key=jax.random.key(0))
  with pytest.raises(ValueError, match="draft_tokens"):
    sampling.sample(params, [[1]], cfg, draft_tokens=-1, **kw)
  with pytest.raises(ValueError, match="ngram"):
    sampling.sample(params, [[1]], cfg, draft_tokens=2, ngram=0, **kw)
