"""Batched generation with a KV cache (greedy or temperature sampling), for evaluation.

Prompts are left-aligned; every step feeds one token per row at a shared position: the prompt's
own token while a row is still inside its prompt, else the token it generated. One jitted
`lax.while_loop` runs all steps and stops early once every row has emitted a stop token.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from motif_jax.model import ModelConfig
from motif_jax.model.decode import decode_step, init_cache


@functools.partial(jax.jit, static_argnames=("cfg", "max_len", "temperature"))
def _generate(params, prompt_bs, prompt_len_b, stop_ids, key, *, cfg: ModelConfig, max_len: int,
              temperature: float):
  b = prompt_bs.shape[0]
  cache = init_cache(cfg, b, max_len)
  out_bs = jnp.zeros((b, max_len), jnp.int32)

  def cond(carry):
    pos, _, _, done_b, _ = carry
    return (pos < max_len - 1) & ~jnp.all(done_b)

  def body(carry):
    pos, token_b, cache, done_b, out_bs = carry
    logits_bv, cache = decode_step(params, token_b, pos, cache, cfg)
    if temperature > 0:
      sampled_b = jax.random.categorical(jax.random.fold_in(key, pos), logits_bv / temperature)
    else:
      sampled_b = jnp.argmax(logits_bv, axis=-1)
    in_prompt_b = pos + 1 < prompt_len_b
    next_b = jnp.where(in_prompt_b, prompt_bs[:, jnp.minimum(pos + 1, max_len - 1)],
                       sampled_b.astype(jnp.int32))
    generated_b = ~in_prompt_b & ~done_b
    out_bs = out_bs.at[:, pos + 1].set(jnp.where(generated_b, next_b, 0))
    is_stop_b = jnp.any(next_b[:, None] == stop_ids[None, :], axis=-1)
    done_b = done_b | (generated_b & is_stop_b)
    return pos + 1, next_b, cache, done_b, out_bs

  init = (jnp.zeros((), jnp.int32), prompt_bs[:, 0], cache, jnp.zeros((b,), bool), out_bs)
  return jax.lax.while_loop(cond, body, init)[-1]


def generate(params, prompts: Sequence[Sequence[int]], cfg: ModelConfig, *, max_new_tokens: int,
             stop_ids: Sequence[int] = (), temperature: float = 0.0,
             key: jax.Array | None = None) -> list[list[int]]:
  """New tokens per prompt, up to and including the first stop token (or max_new_tokens)."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("generate needs at least one prompt and no empty prompt")
  lengths = np.array([len(p) for p in prompts], np.int32)
  max_len = int(lengths.max()) + max_new_tokens
  max_len = -(-max_len // 64) * 64  # bucket the cache length to limit recompilation
  prompt_bs = np.zeros((len(prompts), max_len), np.int32)
  for i, p in enumerate(prompts):
    prompt_bs[i, :len(p)] = p
  stops = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
  key = jax.random.key(0) if key is None else key
  out_bs = np.asarray(_generate(params, prompt_bs, lengths, stops, key, cfg=cfg, max_len=max_len,
                                temperature=float(temperature)))
  results = []
  for i, n in enumerate(lengths):
    new = out_bs[i, n:n + max_new_tokens].tolist()
    for j, tok in enumerate(new):
      if tok in stop_ids:
        new = new[:j + 1]
        break
    results.append(new)
  return results
