"""The sampler: completions of token prompts with their behaviour log-probs (evaluation, RL).

    rollouts = sample(params, prompts, cfg, num_samples=8, max_new_tokens=256, temperature=1.0,
                      stop_ids=[eos], key=jax.random.key(0))

One jitted call per batch of prompts:
  1. prefill: the P prompts, right-padded to a bucketed length, run through the model
     `prefill_chunk` positions per forward pass, writing the KV cache (`model.decode.prefill`);
  2. the `num_samples` completions of a prompt share its prefill: cache rows are gathered
     (prompt-major) instead of recomputing the prompt per sample;
  3. one `lax.while_loop` decodes a token per row per step, row r at its own position (its
     prompt length + tokens so far), and exits as soon as every row has emitted a stop id or
     used its `max_new_tokens` budget. The cache grows in windows (`Plan.windows`): the loop
     runs on a cache of the first window's slots until a live row's next block would not fit,
     then the cache is padded to the next window and the same loop goes on, so a step's
     attention reads the slots in use so far, rounded up, not the whole budget. With
     `draft_tokens=k` a step also drafts k tokens per row from the row's own text and verifies
     them in the same pass (`speculative.py`), so a row advances by 1 + its accepted drafts;
     the output distribution is unchanged.

Log-probs. `logprobs[r, i]` is log softmax(logits / T)[token] over the full vocabulary in float32:
what `losses.token_logprobs_and_entropy(..., temperature=T)` recomputes in the trainer for the
same tokens (tested to 1e-5), so the on-policy importance ratio is exactly 1. At T = 0 (greedy)
it is taken at T = 1. Top-k / top-p sampling draws from a truncated, renormalized distribution
instead, whose log-prob (`truncated_logprobs`) is larger than `logprobs` by the log of the kept
mass; the trainer never sees that distribution, so ratios computed against `logprobs` are then
biased (the mismatch TRL#6789 reports). RL should therefore sample with top_p=1, top_k=0 (the
defaults); evaluation may truncate freely.

Sharding: under `jax.set_mesh(mesh)` the params stay as the trainer shards them and rows are split
over the batch axes (`cfg.sharding.batch`, plus the sequence axis, which sampling never splits);
rows are padded to a multiple of those shards. Each row draws from its own key,
fold_in(key, row) then fold_in(·, step), so results do not depend on padding or on the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from motif_jax import sampling_plan as plans
from motif_jax import sharding as shd
from motif_jax import speculative
from motif_jax.model import ModelConfig
from motif_jax.model import decode
from motif_jax.sampling_plan import (WINDOW_MIN, Plan, auto_window_slots,  # noqa: F401
                                     default_window_slots, make_plan, prefill_length)


@dataclasses.dataclass(frozen=True)
class Rollouts:
  """Completions, prompt-major: rows i*num_samples .. (i+1)*num_samples-1 belong to prompt i.

  tokens [n, max_new] int32, 0 after the end; lengths [n] generated tokens (stop id included);
  logprobs [n, max_new] float32 behaviour log-probs under the full tempered distribution, 0
  after the end; truncated_logprobs the same under the top-k/top-p distribution actually
  sampled (equal to logprobs without truncation); finished [n] True when a stop id ended the
  row, False when the budget did (finish reason "length"); prompt_index [n] int32.
  """

  tokens: np.ndarray
  lengths: np.ndarray
  logprobs: np.ndarray
  truncated_logprobs: np.ndarray
  finished: np.ndarray
  prompt_index: np.ndarray
  decode_steps: int
  accepted_drafts: int = 0  # drafted tokens kept (speculative decoding), over all rows

  @property
  def finish_reasons(self) -> list[str]:
    return ["stop" if f else "length" for f in self.finished]


def truncate_logits(logits_bv: jax.Array, *, top_k: int, top_p: float) -> jax.Array:
  """Logits outside the top-k, then outside the nucleus of the renormalized rest, set to -inf.

  The nucleus is the smallest set of most likely tokens whose probability reaches top_p (a token
  is kept when the mass strictly before it, in descending order, is below top_p). Tokens tied
  with the last kept logit are kept too.
  """
  if top_k > 0 and top_k < logits_bv.shape[-1]:
    kth_b1 = jax.lax.top_k(logits_bv, top_k)[0][:, -1:]
    logits_bv = jnp.where(logits_bv >= kth_b1, logits_bv, -jnp.inf)
  if top_p < 1.0:
    sorted_bv = -jnp.sort(-logits_bv, axis=-1)
    probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
    before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
    kept_b1 = jnp.sum(before_bv < top_p, axis=-1, keepdims=True)
    threshold_b1 = jnp.take_along_axis(sorted_bv, kept_b1 - 1, axis=-1)
    logits_bv = jnp.where(logits_bv >= threshold_b1, logits_bv, -jnp.inf)
  return logits_bv


def _tempered(logits_bv: jax.Array, plan: Plan) -> tuple[jax.Array, jax.Array]:
  """(full tempered logits, top-k/top-p truncated ones), float32; greedy: the logits twice."""
  logits_bv = logits_bv.astype(jnp.float32)
  if plan.temperature == 0.0:
    return logits_bv, logits_bv
  tempered_bv = logits_bv / plan.temperature
  return tempered_bv, truncate_logits(tempered_bv, top_k=plan.top_k, top_p=plan.top_p)


def _is_truncated(plan: Plan, vocab: int) -> bool:
  return plan.temperature > 0 and (plan.top_p < 1.0 or 0 < plan.top_k < vocab)


def _logprob(z_bv: jax.Array, tokens_b: jax.Array) -> jax.Array:
  z_b1 = jnp.take_along_axis(z_bv, tokens_b[:, None], axis=-1)
  return (z_b1 - jax.nn.logsumexp(z_bv, axis=-1, keepdims=True))[:, 0]


def select_tokens(logits_bv: jax.Array, keys_b: jax.Array, plan: Plan,
                  exclude_b: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(tokens [b], log-prob under the full tempered distribution, under the truncated one).

  `exclude_b` (token id, or -1 for none) is removed from row b's sampling distribution, not from
  its log-probs: after a rejected draft (speculative.py) the position is sampled from the
  residual, which makes the emitted token a sample from the full distribution.
  """
  tempered_bv, truncated_bv = _tempered(logits_bv, plan)
  if plan.temperature == 0.0:
    tokens_b = jnp.argmax(tempered_bv, axis=-1).astype(jnp.int32)
  else:
    draw_bv = truncated_bv
    if exclude_b is not None:
      hit_bv = jnp.arange(draw_bv.shape[-1])[None, :] == exclude_b[:, None]
      residual_bv = jnp.where(hit_bv, -jnp.inf, draw_bv)
      # A draft rejected at probability ~1 can leave no residual mass: then keep it.
      draw_bv = jnp.where(jnp.any(residual_bv > -jnp.inf, axis=-1, keepdims=True), residual_bv,
                          draw_bv)
    tokens_b = jax.vmap(jax.random.categorical)(keys_b, draw_bv).astype(jnp.int32)
  full_b = _logprob(tempered_bv, tokens_b)
  truncated = _is_truncated(plan, logits_bv.shape[-1])
  return tokens_b, full_b, _logprob(truncated_bv, tokens_b) if truncated else full_b


def verify_drafts(logits_rkv: jax.Array, drafts_rk: jax.Array, keys_r: jax.Array, plan: Plan
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Accept draft j of row r with probability p_j(draft) (temperature 0: when it is the argmax),
  p_j the sampling distribution after the tokens before it: (accept [r, k], full and truncated
  log-probs of the drafts [r, k])."""
  r, k, v = logits_rkv.shape
  tempered_nv, truncated_nv = _tempered(logits_rkv.reshape(r * k, v), plan)
  drafts_n = drafts_rk.reshape(r * k)
  full_n = _logprob(tempered_nv, drafts_n)
  trunc_n = _logprob(truncated_nv, drafts_n) if _is_truncated(plan, v) else full_n
  if plan.temperature == 0.0:
    accept_n = jnp.argmax(tempered_nv, axis=-1) == drafts_n
  else:
    uniform_rk = jax.vmap(lambda key: jax.random.uniform(key, (k,)))(keys_r)
    accept_n = uniform_rk.reshape(r * k) < jnp.exp(trunc_n)
  return accept_n.reshape(r, k), full_n.reshape(r, k), trunc_n.reshape(r, k)


def sampling_config(cfg: ModelConfig) -> ModelConfig:
  """`cfg` with the sequence mesh axes moved into the batch axes: sampling never splits a row."""
  rules = cfg.sharding
  batch = rules.mesh_axes("batch")
  batch += tuple(a for a in rules.mesh_axes("seq") if a not in batch)
  return dataclasses.replace(cfg, sharding=dataclasses.replace(rules, batch=batch, seq=None))


@functools.partial(jax.jit, static_argnames=("cfg", "plan"))
def _rollout(params, prompts_pt, lengths_p, row_prompt_r, row_ids_r, row_valid_r, stop_ids,
             key, *, cfg: ModelConfig, plan: Plan):
  """Prefill, share, decode: (tokens, logprobs, truncated logprobs, lengths, finished, steps,
  accepted drafts)."""
  rules = cfg.sharding
  windows = plan.windows
  cache = decode.init_cache(cfg, plan.prompt_rows, windows[0])
  h_last_pd, cache = decode.prefill(params, prompts_pt, lengths_p, cache, cfg,
                                    chunk=plan.prefill_chunk)
  params = decode.decode_params(params, cfg)  # per-layer weights, sliced once before the loop
  logits_pv = decode.head_logits(params, h_last_pd, cfg)
  # Samples share their prompt's prefill: gather cache rows (prompt-major) instead of recomputing.
  cache = {name: [shd.constrain(jnp.take(c, row_prompt_r, axis=0), decode.cache_axes(name, cfg),
                                rules) for c in layers] for name, layers in cache.items()}
  logits_rv = jnp.take(logits_pv, row_prompt_r, axis=0)
  pos_r = jnp.take(lengths_p, row_prompt_r)
  row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, row_ids_r)
  k = plan.draft_tokens
  # Draft lookup reads each row's sequence: its prompt, then what it generated (k > 0 only).
  history_rl = jnp.pad(jnp.take(prompts_pt, row_prompt_r, axis=0),
                       ((0, 0), (0, plan.cache_len - plan.prompt_len))) if k else None

  def step_keys(i):
    keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, i)
    if not k:
      return keys, None
    pair = jax.vmap(jax.random.split)(keys)
    return pair[:, 0], pair[:, 1]

  def is_stop(tokens):
    return jnp.any(tokens[..., None] == stop_ids.reshape((1,) * tokens.ndim + (-1,)), axis=-1)

  r, n = plan.rows, plan.max_new_tokens
  # k + 1 spare columns: a step writes its whole block at the row's length, the tail is rewritten
  # by the next step or cleared after the loop.
  out = {name: shd.constrain(jnp.zeros((r, n + k + 1), dtype), ("batch", None), rules)
         for name, dtype in (("tokens", jnp.int32), ("logprobs", jnp.float32),
                             ("truncated", jnp.float32))}

  def cond(carry):
    i, done_r = carry[0], carry[5]
    return (i < n) & ~jnp.all(done_r)

  def body(carry):
    # Token 0 of the step from the logits carried in (prefill's, then the previous step's), k
    # drafts after it, one decode pass over the block; a row keeps token 0 and its accepted
    # drafts, and carries the logits after the last one kept.
    i, logits_rv, exclude_r, pos_r, cache, done_r, stopped_r, lengths_r, history, out, accepted = (
        carry)
    token_key_r, draft_key_r = step_keys(i)
    tok_r, lp_r, tlp_r = select_tokens(logits_rv, token_key_r, plan,
                                       exclude_r if k and plan.temperature > 0 else None)
    live_r = ~done_r
    if k:
      history = speculative.write_rows(history, tok_r[:, None], pos_r)
      drafts_rk = speculative.ngram_drafts(history, pos_r, k, plan.ngram)
      block_rt = jnp.concatenate([tok_r[:, None], drafts_rk], axis=1)
    else:
      block_rt = tok_r[:, None]
    logits_rtv, cache = decode.decode_block(params, block_rt, pos_r, cache, cfg)
    lp_rt, tlp_rt = lp_r[:, None], tlp_r[:, None]
    if k:
      accept_rk, dlp_rk, dtlp_rk = verify_drafts(logits_rtv[:, :k], drafts_rk, draft_key_r, plan)
      drafted_r = speculative.accepted_prefix(accept_rk)
      lp_rt = jnp.concatenate([lp_rt, dlp_rk], axis=1)
      tlp_rt = jnp.concatenate([tlp_rt, dtlp_rk], axis=1)
      history = speculative.write_rows(history, drafts_rk, pos_r + 1)  # token 0 is there
    else:
      drafted_r = jnp.zeros_like(pos_r)
    # Kept: token 0 and the accepted drafts, cut at the budget and after the first stop id.
    kept_r = jnp.minimum(1 + drafted_r, n - lengths_r)
    stop_rt = is_stop(block_rt) & (jnp.arange(k + 1)[None, :] < kept_r[:, None])
    hit_r = jnp.any(stop_rt, axis=1)
    kept_r = jnp.where(live_r, jnp.where(hit_r, jnp.argmax(stop_rt, axis=1) + 1, kept_r), 0)
    out = {name: speculative.write_rows(out[name], value, lengths_r)
           for name, value in (("tokens", block_rt), ("logprobs", lp_rt), ("truncated", tlp_rt))}
    lengths_r = lengths_r + kept_r
    stopped_r = stopped_r | (live_r & hit_r)
    done_r = done_r | stopped_r | (lengths_r >= n)
    last_r = jnp.maximum(kept_r - 1, 0)
    logits_rv = jnp.take_along_axis(logits_rtv, last_r[:, None, None], axis=1)[:, 0]
    if k:  # the draft rejected after the last kept token leaves the next sample's distribution
      exclude_r = jnp.where(last_r < k, jnp.take_along_axis(
          drafts_rk, jnp.minimum(last_r, k - 1)[:, None], axis=1)[:, 0], -1)
      accepted = accepted + jnp.sum(last_r)  # drafts kept: all but token 0
    return (i + 1, logits_rv, exclude_r, pos_r + kept_r, cache, done_r, stopped_r, lengths_r,
            history, out, accepted)

  def fits(window):  # every live row's next block of k + 1 slots lies inside the window
    def cond_fits(carry):
      pos_r, done_r = carry[3], carry[5]
      return cond(carry) & (jnp.max(jnp.where(done_r, 0, pos_r)) + k + 1 <= window)
    return cond if window == plan.cache_len else cond_fits

  zeros_r = jnp.zeros((r,), jnp.int32)
  carry = (jnp.zeros((), jnp.int32), logits_rv, zeros_r - 1, pos_r, cache, ~row_valid_r,
           zeros_r > 0, zeros_r, history_rl, out, jnp.zeros((), jnp.int32))
  for w, window in enumerate(windows):
    if w:
      carry = (*carry[:4], decode.grow_cache(carry[4], window, cfg), *carry[5:])
    carry = jax.lax.while_loop(fits(window), body, carry)
  steps, _, _, _, _, _, stopped_r, lengths_r, _, out, accepted = carry
  kept_rn = jnp.arange(n)[None, :] < lengths_r[:, None]
  out = {name: jnp.where(kept_rn, value[:, :n], 0) for name, value in out.items()}
  return (out["tokens"], out["logprobs"], out["truncated"], lengths_r, stopped_r, steps,
          accepted)


def _batch_shards(cfg: ModelConfig) -> tuple[int, object]:
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1, None
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return int(np.prod([sizes.get(a, 1) for a in cfg.sharding.mesh_axes("batch")])), mesh


def lower(params, cfg: ModelConfig, plan: Plan, mesh) -> jax.stages.Lowered:
  """The jitted rollout of `plan` lowered on abstract inputs (`params` may be ShapeDtypeStructs),
  rows over the batch axes of `mesh`: what `sample` runs, for AOT memory figures."""
  cfg = sampling_config(cfg)
  rows = NamedSharding(mesh, shd.activation_spec(("batch",), cfg.sharding, mesh))
  spec = lambda shape, dtype, s=rows: jax.ShapeDtypeStruct(shape, dtype, sharding=s)  # noqa: E731
  stops = spec((4,), jnp.int32, NamedSharding(mesh, PartitionSpec()))
  args = (spec((plan.prompt_rows, plan.prompt_len), jnp.int32),
          spec((plan.prompt_rows,), jnp.int32), spec((plan.rows,), jnp.int32),
          spec((plan.rows,), jnp.int32), spec((plan.rows,), jnp.bool_), stops)
  return _rollout.lower(params, *args, jax.random.key(0), cfg=cfg, plan=plan)


def sample(params, prompts: Sequence[Sequence[int]], cfg: ModelConfig, *, num_samples: int = 1,
           max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
           stop_ids: Sequence[int] = (), key: jax.Array, prefill_chunk: int = 512,
           draft_tokens: int = 0, ngram: int = 3, window_slots: int | None = None) -> Rollouts:
  """`num_samples` completions of each prompt (token-id lists), prompt-major; see module doc.

  Args:
    temperature: 0 is greedy (argmax; top_k and top_p are then unused).
    top_k: keep the k most likely tokens (0 = off); top_p: then the nucleus of mass top_p.
    stop_ids: a row ends after emitting any of these (included in its tokens and length).
    prefill_chunk: prompt positions per prefill pass (bounds prefill memory on long prompts).
    draft_tokens: n-gram speculative decoding (`motif_jax/speculative.py`): up to this many
      tokens per step drafted from the row's own history and verified in the same pass; the
      output distribution is unchanged (greedy: the same tokens). 0 = one token per step.
    ngram: the longest n-gram the drafts are looked up by.
    window_slots: the KV cache grows by this many slots at a time (`Plan.windows`), so early
      steps attend over fewer slots; None = `sampling_plan.default_window_slots` (windows on
      CPU for budgets of >= 256 new tokens; one window otherwise and on accelerators, where
      growing briefly holds two caches), 0 = the whole cache from the start. Same tokens and log-probs either way (up to float summation order).
  """
  plans.check_args(prompts, cfg, num_samples, max_new_tokens, temperature, top_p, top_k,
                   prefill_chunk, draft_tokens, ngram, window_slots)
  cfg = sampling_config(cfg)
  shards, mesh = _batch_shards(cfg)
  n_prompts, n_rows = len(prompts), len(prompts) * num_samples
  lengths = np.array([len(p) for p in prompts], np.int32)
  plan = make_plan(n_prompts, num_samples, int(lengths.max()), max_new_tokens=max_new_tokens,
                   temperature=temperature, top_p=top_p, top_k=top_k,
                   prefill_chunk=prefill_chunk, shards=shards, draft_tokens=draft_tokens,
                   ngram=ngram, window_slots=window_slots)
  prompt_len = plan.prompt_len
  prompts_pt = np.zeros((plan.prompt_rows, prompt_len), np.int32)
  for i, p in enumerate(prompts):
    prompts_pt[i, :len(p)] = p
  lengths_p = np.ones((plan.prompt_rows,), np.int32)  # padding prompts: one token, never used
  lengths_p[:n_prompts] = lengths
  row_ids = np.arange(plan.rows, dtype=np.int32)
  row_prompt = np.where(row_ids < n_rows, row_ids // num_samples, 0).astype(np.int32)
  stops = np.full((plans.round_up(max(len(stop_ids), 1), 4),), -1, np.int32)
  stops[:len(stop_ids)] = list(stop_ids)
  args = (prompts_pt, lengths_p, row_prompt, row_ids, row_ids < n_rows, stops)
  if mesh is not None:  # rows over the batch axes, everything else replicated
    concrete = jax.sharding.get_mesh()
    batch_spec = shd.activation_spec(("batch",), cfg.sharding, mesh)
    args = tuple(jax.device_put(a, NamedSharding(concrete, batch_spec if a.ndim and a is not stops
                                                 else PartitionSpec())) for a in args)
  out = _rollout(params, *args, key, cfg=cfg, plan=plan)
  if jax.process_count() > 1:
    out = multihost_utils.process_allgather(out, tiled=True)
  tokens, logprobs, truncated, lengths_r, stopped, steps, accepted = (np.asarray(x) for x in out)
  return Rollouts(tokens=tokens[:n_rows], lengths=lengths_r[:n_rows], logprobs=logprobs[:n_rows],
                  truncated_logprobs=truncated[:n_rows], finished=stopped[:n_rows],
                  prompt_index=row_prompt[:n_rows].copy(), decode_steps=int(steps),
                  accepted_drafts=int(accepted))
