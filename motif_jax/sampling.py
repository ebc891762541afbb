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
     used its `max_new_tokens` budget.

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

from motif_jax import sharding as shd
from motif_jax.model import ModelConfig
from motif_jax.model import decode


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

  @property
  def finish_reasons(self) -> list[str]:
    return ["stop" if f else "length" for f in self.finished]


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static shapes and sampling settings of one compiled rollout."""

  prompt_rows: int  # P padded to the batch shards
  rows: int  # P * num_samples padded to the batch shards
  prompt_len: int  # bucketed prefill length
  cache_len: int
  max_new_tokens: int
  temperature: float
  top_p: float
  top_k: int
  prefill_chunk: int


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


def select_tokens(logits_bv: jax.Array, keys_b: jax.Array, plan: Plan
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(tokens [b], log-prob under the full tempered distribution, under the truncated one)."""
  logits_bv = logits_bv.astype(jnp.float32)
  if plan.temperature == 0.0:
    tokens_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    tempered_bv = truncated_bv = logits_bv
  else:
    tempered_bv = logits_bv / plan.temperature
    truncated_bv = truncate_logits(tempered_bv, top_k=plan.top_k, top_p=plan.top_p)
    tokens_b = jax.vmap(jax.random.categorical)(keys_b, truncated_bv).astype(jnp.int32)

  def logprob(z_bv):
    z_b1 = jnp.take_along_axis(z_bv, tokens_b[:, None], axis=-1)
    return (z_b1 - jax.nn.logsumexp(z_bv, axis=-1, keepdims=True))[:, 0]

  full_b = logprob(tempered_bv)
  truncated = plan.temperature > 0 and (plan.top_p < 1.0 or 0 < plan.top_k < logits_bv.shape[-1])
  return tokens_b, full_b, logprob(truncated_bv) if truncated else full_b


def sampling_config(cfg: ModelConfig) -> ModelConfig:
  """`cfg` with the sequence mesh axes moved into the batch axes: sampling never splits a row."""
  rules = cfg.sharding
  batch = rules.mesh_axes("batch")
  batch += tuple(a for a in rules.mesh_axes("seq") if a not in batch)
  return dataclasses.replace(cfg, sharding=dataclasses.replace(rules, batch=batch, seq=None))


@functools.partial(jax.jit, static_argnames=("cfg", "plan"))
def _rollout(params, prompts_pt, lengths_p, row_prompt_r, row_ids_r, row_valid_r, stop_ids,
             key, *, cfg: ModelConfig, plan: Plan):
  """Prefill, share, decode: (tokens, logprobs, truncated logprobs, lengths, finished, steps)."""
  rules = cfg.sharding
  cache = decode.init_cache(cfg, plan.prompt_rows, plan.cache_len)
  h_last_pd, cache = decode.prefill(params, prompts_pt, lengths_p, cache, cfg,
                                    chunk=plan.prefill_chunk)
  params = decode.decode_params(params, cfg)  # per-layer weights, sliced once before the loop
  logits_pv = decode.head_logits(params, h_last_pd, cfg)
  # Samples share their prompt's prefill: gather cache rows (prompt-major) instead of recomputing.
  cache = jax.tree.map(lambda c: shd.constrain(jnp.take(c, row_prompt_r, axis=0),
                                               decode.CACHE_AXES, rules), cache)
  logits_rv = jnp.take(logits_pv, row_prompt_r, axis=0)
  pos_r = jnp.take(lengths_p, row_prompt_r)
  row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, row_ids_r)

  def step_keys(i):
    return jax.vmap(jax.random.fold_in, (0, None))(row_keys, i)

  def is_stop(tokens_r):
    return jnp.any(tokens_r[:, None] == stop_ids[None, :], axis=-1)

  r, n = plan.rows, plan.max_new_tokens
  out = {name: shd.constrain(jnp.zeros((r, n), dtype), ("batch", None), rules)
         for name, dtype in (("tokens", jnp.int32), ("logprobs", jnp.float32),
                             ("truncated", jnp.float32))}

  def cond(carry):
    i, _, _, _, done_r, _, _, _ = carry
    return (i < n) & ~jnp.all(done_r)

  def body(carry):
    # Token i of every row from the logits carried in (prefill's, then the previous step's),
    # then one decode step that feeds it back. The loop's last step is not needed (one of n).
    i, logits_rv, pos_r, cache, done_r, stopped_r, lengths_r, out = carry
    tok_r, lp_r, tlp_r = select_tokens(logits_rv, step_keys(i), plan)
    live_r = ~done_r
    out = {name: jax.lax.dynamic_update_slice_in_dim(
        out[name], jnp.where(live_r, value, 0).astype(out[name].dtype)[:, None], i, axis=1)
           for name, value in (("tokens", tok_r), ("logprobs", lp_r), ("truncated", tlp_r))}
    lengths_r = lengths_r + live_r.astype(jnp.int32)
    stopped_r = stopped_r | (live_r & is_stop(tok_r))
    done_r = done_r | stopped_r
    logits_rv, cache = decode.decode_step(params, tok_r, pos_r, cache, cfg)
    return i + 1, logits_rv, pos_r + 1, cache, done_r, stopped_r, lengths_r, out

  zeros_r = jnp.zeros((r,), jnp.int32)
  init = (jnp.zeros((), jnp.int32), logits_rv, pos_r, cache, ~row_valid_r, zeros_r > 0, zeros_r,
          out)
  steps, _, _, _, _, stopped_r, lengths_r, out = jax.lax.while_loop(cond, body, init)
  return out["tokens"], out["logprobs"], out["truncated"], lengths_r, stopped_r, steps


def prefill_length(n: int, chunk: int) -> int:
  """Prefill length: a power of two (>= 16) up to `chunk`, then whole chunks."""
  if n > chunk:
    return -(-n // chunk) * chunk
  return min(max(16, 1 << (n - 1).bit_length()), chunk) if n > 16 else min(16, chunk)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _batch_shards(cfg: ModelConfig) -> tuple[int, object]:
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return 1, None
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return int(np.prod([sizes.get(a, 1) for a in cfg.sharding.mesh_axes("batch")])), mesh


def _check(prompts, cfg, num_samples, max_new_tokens, temperature, top_p, top_k, prefill_chunk):
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("sample needs at least one prompt and no empty prompt")
  for name, value in (("num_samples", num_samples), ("max_new_tokens", max_new_tokens),
                      ("prefill_chunk", prefill_chunk)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"sample: {name}={value!r} must be a positive integer")
  if not temperature >= 0:
    raise ValueError(f"sample: temperature={temperature!r} must be >= 0 (0 = greedy)")
  if not 0 < top_p <= 1:
    raise ValueError(f"sample: top_p={top_p!r} must be in (0, 1]")
  if not isinstance(top_k, int) or top_k < 0:
    raise ValueError(f"sample: top_k={top_k!r} must be a non-negative integer (0 = off)")
  bad = [t for p in prompts for t in p if not 0 <= t < cfg.vocab_size]
  if bad:
    raise ValueError(f"sample: prompt token {bad[0]} outside the vocabulary [0, {cfg.vocab_size})")


def make_plan(n_prompts: int, num_samples: int, max_prompt_len: int, *, max_new_tokens: int,
              temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
              prefill_chunk: int = 512, shards: int = 1) -> Plan:
  """The static shapes `sample` compiles for `n_prompts` prompts of up to `max_prompt_len`
  tokens: rows padded to the batch `shards`, the prefill bucket, KV slots per row."""
  prompt_len = prefill_length(max_prompt_len, prefill_chunk)
  return Plan(prompt_rows=_round_up(n_prompts, shards),
              rows=_round_up(n_prompts * num_samples, shards), prompt_len=prompt_len,
              cache_len=prompt_len + max_new_tokens, max_new_tokens=max_new_tokens,
              temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
              prefill_chunk=prefill_chunk)


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
           stop_ids: Sequence[int] = (), key: jax.Array, prefill_chunk: int = 512) -> Rollouts:
  """`num_samples` completions of each prompt (token-id lists), prompt-major; see module doc.

  Args:
    temperature: 0 is greedy (argmax; top_k and top_p are then unused).
    top_k: keep the k most likely tokens (0 = off); top_p: then the nucleus of mass top_p.
    stop_ids: a row ends after emitting any of these (included in its tokens and length).
    prefill_chunk: prompt positions per prefill pass (bounds prefill memory on long prompts).
  """
  _check(prompts, cfg, num_samples, max_new_tokens, temperature, top_p, top_k, prefill_chunk)
  cfg = sampling_config(cfg)
  shards, mesh = _batch_shards(cfg)
  n_prompts, n_rows = len(prompts), len(prompts) * num_samples
  lengths = np.array([len(p) for p in prompts], np.int32)
  plan = make_plan(n_prompts, num_samples, int(lengths.max()), max_new_tokens=max_new_tokens,
                   temperature=temperature, top_p=top_p, top_k=top_k,
                   prefill_chunk=prefill_chunk, shards=shards)
  prompt_len = plan.prompt_len
  prompts_pt = np.zeros((plan.prompt_rows, prompt_len), np.int32)
  for i, p in enumerate(prompts):
    prompts_pt[i, :len(p)] = p
  lengths_p = np.ones((plan.prompt_rows,), np.int32)  # padding prompts: one token, never used
  lengths_p[:n_prompts] = lengths
  row_ids = np.arange(plan.rows, dtype=np.int32)
  row_prompt = np.where(row_ids < n_rows, row_ids // num_samples, 0).astype(np.int32)
  stops = np.full((_round_up(max(len(stop_ids), 1), 4),), -1, np.int32)
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
  tokens, logprobs, truncated, lengths_r, stopped, steps = (np.asarray(x) for x in out)
  return Rollouts(tokens=tokens[:n_rows], lengths=lengths_r[:n_rows], logprobs=logprobs[:n_rows],
                  truncated_logprobs=truncated[:n_rows], finished=stopped[:n_rows],
                  prompt_index=row_prompt[:n_rows].copy(), decode_steps=int(steps))
