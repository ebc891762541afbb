"""N-gram (prompt-lookup) speculative decoding: draft tokens from a row's own history, verify
them in one forward pass, keep the longest accepted prefix.

Decoding one token per row per step reads every weight once per token; at small batches that
read, not arithmetic, bounds a step (`motif_jax/bench/sampler.py`'s weights-only floor). A draft
of k tokens verified in one `decode_block` pass reads the weights once for up to k + 1 tokens.
Drafts come from the row itself, as in prompt-lookup decoding (vLLM's `ngram` proposer, HF's
`prompt_lookup_num_tokens`): find the latest earlier occurrence of the row's last n tokens
(longest n <= `ngram` first) and propose the tokens that followed it. Completions copy a lot from
their prompt and from themselves (numbers carried from step to step, repeated phrases), and a
model stuck in a loop repeats exactly.

Verification keeps the output distribution exact (speculative sampling with a deterministic
draft, Leviathan et al. 2023 / Chen et al. 2023): a draft token d at a position whose sampling
distribution is p is accepted with probability p(d) (at temperature 0: when it is p's argmax);
after the first rejection the position is sampled from p with d removed and renormalized, which
`select_tokens` does through its `exclude` argument at the next step. Every emitted token is a
sample from p, so its behaviour log-prob is log p(token) as without drafts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ngram_drafts(history_rl: jax.Array, last_r: jax.Array, num_drafts: int, ngram: int
                 ) -> jax.Array:
  """Up to `num_drafts` next tokens of each row by prompt lookup: [r, num_drafts] int32.

  `history_rl[r, :last_r[r] + 1]` is row r's sequence (prompt, then completion); slots after
  last_r are ignored. Finds the latest s < last with history[s - j] == history[last - j] for j <
  n, for the largest n <= `ngram` that has a match, and proposes history[s + 1 ...]; when the
  continuation reaches `last` it repeats the period last - s (a loop continues as a loop). Rows
  without any match propose their last token again.
  """
  rows, length = history_rl.shape
  slot_l = jnp.arange(length)
  match_rl = slot_l[None, :] < last_r[:, None]
  best_r = jnp.full((rows,), -1, jnp.int32)
  for j in range(ngram):
    shifted_rl = jnp.pad(history_rl, ((0, 0), (j, 0)))[:, :length]  # shifted[s] = history[s-j]
    target_r = jnp.take_along_axis(history_rl, jnp.maximum(last_r - j, 0)[:, None], axis=1)
    match_rl = match_rl & (shifted_rl == target_r) & (slot_l[None, :] >= j) & (
        last_r[:, None] >= j)
    found_r = jnp.max(jnp.where(match_rl, slot_l[None, :], -1), axis=1).astype(jnp.int32)
    best_r = jnp.where(found_r >= 0, found_r, best_r)  # a longer match wins
  period_r = jnp.maximum(last_r - best_r, 1)
  source_rk = best_r[:, None] + 1 + jnp.arange(num_drafts)[None, :] % period_r[:, None]
  source_rk = jnp.where(best_r[:, None] >= 0, source_rk, last_r[:, None])
  return jnp.take_along_axis(history_rl, source_rk, axis=1).astype(jnp.int32)


def accepted_prefix(accept_rk: jax.Array) -> jax.Array:
  """Number of leading True entries per row: [r] int32."""
  return jnp.sum(jnp.cumprod(accept_rk.astype(jnp.int32), axis=1), axis=1)


def write_rows(buffer_rn: jax.Array, block_rt: jax.Array, start_r: jax.Array) -> jax.Array:
  """buffer[r, start_r[r] : start_r[r] + t] = block[r] (a vmapped dynamic_update_slice)."""
  return jax.vmap(lambda row_n, new_t, s: jax.lax.dynamic_update_slice_in_dim(
      row_n, new_t.astype(row_n.dtype), s, axis=0))(buffer_rn, block_rt, start_r)
