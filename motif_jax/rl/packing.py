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

`add_sft_rows` appends packed SFT rows (rl.sft_coef > 0, PPO-ptx): their RL fields are zero
(no loss_mask, no sequence), and `sft_weights` puts sft_coef x (RL count / SFT tokens) on their
completion tokens, so the step's one division by the RL count gives RL loss + sft_coef x the
mean SFT NLL, exactly, under any micro-batching.
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


def rl_count(batch: dict[str, np.ndarray], level: str) -> int:
  """What `rl_step` divides by: completion tokens (token level) or trajectories with at least
  one completion token (sequence level)."""
  mask = batch["loss_mask"] > 0
  if level == "token":
    return int(mask.sum())
  rows, _ = np.nonzero(mask)
  return len(set(zip(rows.tolist(), batch["sequence_ids"][mask].tolist())))


def add_sft_rows(batch: dict[str, np.ndarray], sft: dict[str, np.ndarray], *, coef: float,
                 level: str) -> dict[str, np.ndarray]:
  """`batch`'s rows, then `sft`'s (an SFT pipeline batch: tokens, targets, segment_ids,
  positions, loss_mask), with `sft_weights` (see the module docstring)."""
  rows = sft["tokens"].shape[0]
  if sft["tokens"].shape[1] != batch["tokens"].shape[1]:
    raise ValueError(f"SFT rows hold {sft['tokens'].shape[1]} tokens, RL rows "
                     f"{batch['tokens'].shape[1]}")
  sft_mask = (sft["loss_mask"] > 0).astype(np.float32)
  scale = coef * max(rl_count(batch, level), 1) / max(float(sft_mask.sum()), 1.0)
  out = {}
  for k, v in batch.items():
    extra = sft[k] if k in ("tokens", "targets", "segment_ids", "positions") else 0
    out[k] = np.concatenate([v, np.broadcast_to(np.asarray(extra, v.dtype),
                                                (rows, v.shape[1]))], axis=0)
  out["sft_weights"] = np.concatenate([np.zeros_like(batch["advantages"]), scale * sft_mask])
  return out
