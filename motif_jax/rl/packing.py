"""Pack scored trajectories into the [rows, seq_len] batch that `rl_step` reads.

Same layout as SFT packing (motif_jax.data.packing): a trajectory's ids = prompt + completion,
`tokens = ids[:-1]`, `targets = ids[1:]`, loss_mask on the positions whose target is a completion
token, segment ids 1, 2, ... per row (0 = padding) and positions restarting at 0. Each
trajectory is one segment and one sequence id; the behaviour log-prob of completion token j sits
at the position that predicts it, and the trajectory's advantage, reward, passed, truncated and
domain are repeated on its tokens. Rows are filled first-fit in the given order (deterministic).
`old_logprobs` starts as a copy of the behaviour log-probs (`rl_updates` replaces it as
rl.old_policy says); `ref_logprobs`, when rl.kl_coef > 0, come from a forward pass of the
reference params (`step.jit_old_logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from motif_jax.rl.replay import Trajectory

_INT_KEYS = ("tokens", "targets", "segment_ids", "positions", "loss_mask", "sequence_ids",
             "domain_ids")
_FLOAT_KEYS = ("advantages", "behaviour_logprobs", "rewards", "passed", "truncated")


def first_fit(trajectories: Sequence[Trajectory], *, rows: int, seq_len: int
              ) -> tuple[list[Trajectory], int]:
  """(the trajectories `pack_trajectories` can place, in order; how many do not fit). A batch of
  unusually long completions can overflow rows sized for typical ones: those are left out."""
  fill = np.zeros(rows, np.int64)
  kept = []
  for t in trajectories:
    n = len(t.prompt_tokens) + len(t.completion_tokens) - 1
    free = np.flatnonzero(fill + n <= seq_len)
    if free.size:
      fill[free[0]] += n
      kept.append(t)
  return kept, len(trajectories) - len(kept)


def pack_trajectories(trajectories: Sequence[Trajectory], *, rows: int, seq_len: int
                      ) -> dict[str, np.ndarray]:
  """First-fit packing; raises when a trajectory is longer than a row or the rows are full."""
  batch = {k: np.zeros((rows, seq_len), np.int32) for k in _INT_KEYS}
  batch |= {k: np.zeros((rows, seq_len), np.float32) for k in _FLOAT_KEYS}
  fill = np.zeros(rows, np.int64)
  count = np.zeros(rows, np.int64)
  for i, t in enumerate(trajectories):
    ids = np.concatenate([t.prompt_tokens, t.completion_tokens]).astype(np.int32)
    n, p = len(ids) - 1, len(t.prompt_tokens)
    if n > seq_len:
      raise ValueError(f"trajectory {i} needs {n} positions; rows hold seq_len={seq_len}")
    free = np.flatnonzero(fill + n <= seq_len)
    if not free.size:
      raise ValueError(f"trajectories do not fit in rows={rows} x seq_len={seq_len} "
                       f"(stopped at {i} of {len(trajectories)})")
    r, s = free[0], slice(fill[free[0]], fill[free[0]] + n)
    count[r] += 1
    completion = np.arange(n) >= p - 1  # targets[j] = ids[j + 1] is a completion token
    logprobs = np.zeros(n, np.float32)
    logprobs[p - 1:] = t.behaviour_logprobs
    values = dict(tokens=ids[:-1], targets=ids[1:], segment_ids=count[r], sequence_ids=count[r],
                  positions=np.arange(n), loss_mask=completion, domain_ids=t.domain,
                  advantages=t.advantage, behaviour_logprobs=logprobs, rewards=t.reward,
                  passed=float(t.passed), truncated=float(t.truncated))
    for k, v in values.items():
      batch[k][r, s] = v
    fill[r] += n
  batch["old_logprobs"] = batch["behaviour_logprobs"].copy()
  return batch
