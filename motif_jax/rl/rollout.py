"""Rollouts: sample `rl.group_size` completions per prompt, score them, form groups and
trajectories (with group-relative advantages) for the RL trainer.

`sample_groups` is one sampler call (`motif_jax.sampling.sample`, behaviour log-probs under the
full tempered distribution: RL samples with top_p=1, top_k=0) and one scoring pass
(`motif_jax.rl.rewards.Scorer`); it returns `filtering.Group`s whose payload is the group's
trajectories, their advantage not yet set. `with_advantages` sets it for the groups of one batch
(`objectives.ADVANTAGES[rl.advantage]`, per group, or with the std per domain).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import numpy as np

from motif_jax import sampling
from motif_jax.model import ModelConfig
from motif_jax.rl import objectives, rewards
from motif_jax.rl.config import RLConfig
from motif_jax.rl.filtering import Group
from motif_jax.rl.prompts import PromptPool
from motif_jax.rl.replay import Trajectory


def completion_text(ids: np.ndarray, finished: bool, tokenizer, template) -> str:
  """The response as Record.response holds it: the prompt's think tag (when the prompt ends with
  one: `template.opens_think`) + decoded tokens, without the stop token; ids beyond the tokenizer
  (padded model vocabulary) decode to nothing."""
  body = ids[:-1] if finished else ids
  prefix = template.think_open if template.opens_think else ""
  return prefix + tokenizer.decode([int(i) for i in body if i < tokenizer.vocab_size])


@dataclasses.dataclass(frozen=True)
class Sampled:
  groups: list  # filtering.Group per prompt, payload = trajectories (advantage 0)
  sample_s: float
  score_s: float


def sample_groups(params, pool: PromptPool, prompt_ids: Sequence[int], *, model: ModelConfig,
                  rl: RLConfig, max_new_tokens: int, tokenizer, template, scorer: rewards.Scorer,
                  key: jax.Array, version: int) -> Sampled:
  """rl.group_size scored samples of each prompt in `prompt_ids`, one group per prompt."""
  t0 = time.perf_counter()
  stop = [i for i in (tokenizer.token_id(template.eos),) if i is not None]
  out = sampling.sample(params, [pool.prompt_tokens[p] for p in prompt_ids], model,
                        num_samples=rl.group_size, max_new_tokens=max_new_tokens,
                        temperature=rl.temperature, stop_ids=stop, key=key)
  t1 = time.perf_counter()
  rows = range(len(out.prompt_index))
  records = [pool.records[prompt_ids[int(out.prompt_index[r])]] for r in rows]
  lengths = [int(out.lengths[r]) for r in rows]
  texts = [completion_text(out.tokens[r, :lengths[r]], bool(out.finished[r]), tokenizer, template)
           for r in rows]
  contexts = [rewards.Context(length=lengths[r], max_new_tokens=max_new_tokens,
                              finished=bool(out.finished[r]), template=template) for r in rows]
  scored = scorer.score(texts, records, contexts)
  t2 = time.perf_counter()
  groups = []
  for i, p in enumerate(prompt_ids):
    members = [r for r in rows if out.prompt_index[r] == i]
    trajectories = [Trajectory(
        prompt_tokens=pool.prompt_tokens[p], completion_tokens=out.tokens[r, :lengths[r]].copy(),
        behaviour_logprobs=out.logprobs[r, :lengths[r]].copy(), reward=float(scored[r].score),
        advantage=0.0, passed=bool(scored[r].details["correct"]),
        truncated=not bool(out.finished[r]), prompt_id=int(p), domain=int(pool.domain_p[p]),
        version=version) for r in members]
    groups.append(Group(int(p), [t.reward for t in trajectories],
                        [t.passed for t in trajectories], trajectories))
  return Sampled(groups, t1 - t0, t2 - t1)


def with_advantages(groups: Sequence[Group], rl: RLConfig) -> list[Trajectory]:
  """The groups' trajectories, group-major, with rl.advantage's group-relative advantages
  (negative ones scaled by rl.negative_weight)."""
  trajectories = [t for g in groups for t in g.payload]
  if not trajectories:
    return []
  group_n = np.concatenate([np.full(len(g.payload), i) for i, g in enumerate(groups)])
  adv_n = objectives.ADVANTAGES[rl.advantage](
      np.array([t.reward for t in trajectories]), group_n,
      np.array([t.domain for t in trajectories]), scale=rl.advantage_scale)
  adv_n = objectives.weight_negatives(adv_n, rl.negative_weight)
  return [dataclasses.replace(t, advantage=float(a)) for t, a in zip(trajectories, adv_n)]
