"""The RL prompt pool and the prompt queue.

The pool is every prompt RL may draw, with its reference (answer or tests): the toy ladder's
training problems (`train.prompts="toy"`, the `data.toy` section, the problems SFT trained on),
new problems of that ladder that are not held out (`toy_fresh`), or JSONL/Parquet records with
a prompt, a domain and an answer or tests. Each prompt's domain indexes `rl.domains`.

The queue walks each domain's prompts in a seeded shuffled order, epoch after epoch
(permutation of epoch e = default_rng([seed, domain, e])), and hands out the per-domain counts
the balancer asks for, skipping prompts outside the pass-rate band. When a domain has no prompt
inside the band it hands out the next ones anyway (so their statistics can move and re-admit
them) and counts these draws in `band_ignored`. Its state (per-domain epoch and position) is a
small JSON dict, checkpointed with the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from motif_jax.data import toy_corpus
from motif_jax.data.config import ToyConfig
from motif_jax.data.records import Record


@dataclasses.dataclass(frozen=True)
class PromptPool:
  records: tuple[Record, ...]
  prompt_tokens: tuple[np.ndarray, ...]  # [p_i] int32, the templated prompt
  domain_p: np.ndarray  # [P] int64 index into rl.domains

  def __len__(self) -> int:
    return len(self.records)


TOY_SOURCES = ("toy", "toy_fresh")  # train.prompts values served by `toy_prompts`


def toy_prompts(toy: ToyConfig, source: str = "toy") -> list[Record]:
  """The toy ladder's problems, with answers or tests: `toy` = the training problems (the
  prompts SFT saw), `toy_fresh` = as many new problems of the same ladder (their own seeded
  stream), none of them a held-out prompt, so that what RL gains on them is not a replay of
  memorized SFT answers and the held-out accuracy stays a fair test."""
  if source == "toy":
    problems = toy_corpus.problems(toy, "train", toy.problems)
  elif source == "toy_fresh":
    held_out = {p.prompt for p in toy_corpus.heldout(toy)}
    problems = [p for p in toy_corpus.problems(toy, "rl", toy.problems)
                if p.prompt not in held_out]
  else:
    raise ValueError(f"train.prompts={source!r} is not one of {TOY_SOURCES}")
  return [Record(prompt=p.prompt, response="-", domain=p.domain, source=source,
                 answer=None if p.domain == "code" else p.answer, tests=p.tests,
                 meta=dict(difficulty=p.difficulty, problem_id=f"{p.domain}-{i:06d}"))
          for i, p in enumerate(problems)]


def make_pool(records: Sequence[Record], domains: Sequence[str], tokenizer, template
              ) -> PromptPool:
  """Tokenize the prompts; every record needs a domain of `domains` and a reference."""
  index = {d: i for i, d in enumerate(domains)}
  unknown = sorted({r.domain for r in records} - set(index))
  if unknown:
    raise ValueError(f"rl.domains={','.join(domains)!r} lacks the prompt domains {unknown}")
  missing = sorted(set(domains) - {r.domain for r in records})
  if missing:
    raise ValueError(f"rl.domains={','.join(domains)!r}: the prompt pool has no {missing} "
                     "prompts")
  unverifiable = [i for i, r in enumerate(records) if r.answer is None and not r.tests]
  if unverifiable:
    raise ValueError(f"train.prompts: record {unverifiable[0]} has neither an answer nor tests")
  return PromptPool(tuple(records),
                    tuple(np.asarray(tokenizer.encode(template.record_prompt(r)), np.int32)
                          for r in records),
                    np.array([index[r.domain] for r in records], np.int64))


@dataclasses.dataclass
class PromptQueue:
  seed: int
  domain_p: np.ndarray  # [P] domain index of each prompt
  epochs: list  # per domain
  positions: list  # per domain: prompts of the current epoch already handed out or skipped
  band_ignored: int = 0  # draws made outside the band (no prompt of the domain inside it)

  @classmethod
  def create(cls, domain_p: np.ndarray, num_domains: int, seed: int) -> "PromptQueue":
    return cls(seed, np.asarray(domain_p, np.int64), [0] * num_domains, [0] * num_domains)

  def _order(self, d: int, epoch: int) -> np.ndarray:
    ids = np.flatnonzero(self.domain_p == d)
    return ids[np.random.default_rng([self.seed, d, epoch]).permutation(len(ids))]

  def _next(self, d: int) -> int:
    order = self._order(d, self.epochs[d])
    if self.positions[d] >= len(order):
      self.epochs[d], self.positions[d] = self.epochs[d] + 1, 0
      order = self._order(d, self.epochs[d])
    self.positions[d] += 1
    return int(order[self.positions[d] - 1])

  def draw(self, counts_d: Sequence[int], active_p: np.ndarray) -> list[int]:
    """counts_d[d] prompt ids of each domain d, in queue order, inside the band when possible."""
    out = []
    for d, count in enumerate(counts_d):
      size = int(np.sum(self.domain_p == d))
      any_active = bool(np.any(active_p[self.domain_p == d]))
      for _ in range(int(count)):
        # 2 * size steps cover a whole epoch wherever the walk starts: an active prompt is found.
        for _ in range(2 * size if any_active else 1):
          p = self._next(d)
          if active_p[p] or not any_active:
            break
        self.band_ignored += int(not any_active)
        out.append(p)
    return out

  def state_dict(self) -> dict[str, Any]:
    return {"seed": self.seed, "epochs": list(self.epochs), "positions": list(self.positions),
            "band_ignored": self.band_ignored}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    if state["seed"] != self.seed or len(state["epochs"]) != len(self.epochs):
      raise ValueError("the checkpointed prompt queue belongs to another train.seed or "
                       "rl.domains; use a fresh workdir")
    self.epochs, self.positions = list(state["epochs"]), list(state["positions"])
    self.band_ignored = int(state["band_ignored"])
