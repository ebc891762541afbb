"""The static shape of one sampler call (`sampling.Plan`) and the checks on its arguments.

`make_plan` fixes what `sampling._rollout` compiles for: prompt rows and sample rows padded to
the batch shards, the prefill bucket, the KV cache slots per row and the windows the cache grows
through (`Plan.windows`). Calls with the same plan reuse one compiled rollout.
"""

from __future__ import annotations

import dataclasses

import jax

from motif_jax.model import ModelConfig


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
  draft_tokens: int = 0  # n-gram speculative decoding: tokens drafted per step (0 = off)
  ngram: int = 3  # longest n-gram the drafts are looked up by
  window_slots: int = 0  # cache slots added per window (0 = one window of cache_len slots)

  @property
  def windows(self) -> tuple[int, ...]:
    """Cache sizes the decode loop runs at in turn: prompt_len + window_slots, then
    window_slots more each time, capped at (and ending with) cache_len."""
    if self.window_slots <= 0:
      return (self.cache_len,)
    sizes = [min(self.cache_len, self.prompt_len + self.window_slots)]
    while sizes[-1] < self.cache_len:
      sizes.append(min(self.cache_len, sizes[-1] + self.window_slots))
    return tuple(sizes)


WINDOW_MIN = 64  # fewest cache slots a window adds (auto_window_slots)
WINDOWED_BUDGET = 256  # fewest new slots for which the default grows the cache in windows


def prefill_length(n: int, chunk: int) -> int:
  """Prefill length: a power of two (>= 16) up to `chunk`, then whole chunks."""
  if n > chunk:
    return -(-n // chunk) * chunk
  return min(max(16, 1 << (n - 1).bit_length()), chunk) if n > 16 else min(16, chunk)


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def check_args(prompts, cfg: ModelConfig, num_samples, max_new_tokens, temperature, top_p, top_k,
               prefill_chunk, draft_tokens, ngram, window_slots) -> None:
  """One-line ValueErrors, naming the argument, for what `sampling.sample` cannot run."""
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
  if not isinstance(draft_tokens, int) or draft_tokens < 0:
    raise ValueError(f"sample: draft_tokens={draft_tokens!r} must be a non-negative integer "
                     "(0 = no speculative decoding)")
  if not isinstance(ngram, int) or ngram < 1:
    raise ValueError(f"sample: ngram={ngram!r} must be a positive integer")
  if window_slots is not None and (not isinstance(window_slots, int) or (
      window_slots != 0 and window_slots < draft_tokens + 1)):
    raise ValueError(f"sample: window_slots={window_slots!r} must be 0 (one window), None (auto) "
                     f"or an integer >= draft_tokens + 1 = {draft_tokens + 1}")
  bad = [t for p in prompts for t in p if not 0 <= t < cfg.vocab_size]
  if bad:
    raise ValueError(f"sample: prompt token {bad[0]} outside the vocabulary [0, {cfg.vocab_size})")


def make_plan(n_prompts: int, num_samples: int, max_prompt_len: int, *, max_new_tokens: int,
              temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
              prefill_chunk: int = 512, shards: int = 1, draft_tokens: int = 0,
              ngram: int = 3, window_slots: int | None = None) -> Plan:
  """The static shapes `sample` compiles for `n_prompts` prompts of up to `max_prompt_len`
  tokens: rows padded to the batch `shards`, the prefill bucket, KV slots per row, the cache
  windows (`window_slots`: None = `default_window_slots`, 0 = one window)."""
  prompt_len = prefill_length(max_prompt_len, prefill_chunk)
  if window_slots is None:
    window_slots = default_window_slots(max_new_tokens + draft_tokens, draft_tokens)
  return Plan(prompt_rows=round_up(n_prompts, shards),
              rows=round_up(n_prompts * num_samples, shards), prompt_len=prompt_len,
              cache_len=prompt_len + max_new_tokens + draft_tokens,
              max_new_tokens=max_new_tokens, temperature=float(temperature), top_p=float(top_p),
              top_k=int(top_k), prefill_chunk=prefill_chunk, draft_tokens=draft_tokens,
              ngram=ngram, window_slots=window_slots)


def auto_window_slots(new_slots: int) -> int:
  """Cache window step for `new_slots` generated slots: a quarter of them rounded up to a
  multiple of 64, at least WINDOW_MIN (so at most 4 windows, each one more compiled loop)."""
  return max(WINDOW_MIN, round_up(-(-new_slots // 4), 64))


def default_window_slots(new_slots: int, draft_tokens: int = 0) -> int:
  """`auto_window_slots` on the CPU backend for budgets of at least WINDOWED_BUDGET new slots, 0
  (one window) otherwise.

  Each window is one more compiled decode loop: at 128 new slots (the side-by-side Llama) windows
  saved 3% of a call and added 0.55 s of compilation; at 256 (the RL-shaped bench) they save
  12-19% of a call.

  Growing the cache pads it into a new buffer, so the last growth holds the old and the new
  cache at once (about 1.75x the cache at 4 windows). On CPU the cache is small next to host
  memory and reading fewer slots is the win (the RL-shaped bench: 16.8 -> 13.7 s per call); on
  an accelerator the KV cache is what bounds the rows that fit, so windows are opt-in there.
  """
  if jax.default_backend() != "cpu" or new_slots < WINDOWED_BUDGET:
    return 0
  return max(auto_window_slots(new_slots), draft_tokens + 1)
