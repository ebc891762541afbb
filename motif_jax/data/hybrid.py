"""Hybrid think / no-think SFT sets: some responses keep their working, others answer at once.

A reasoning model's SFT set often mixes both (a "no-think" mode beside the reasoning one). The
quickstart builds one from its kept toy traces (`experiments/quickstart.py --answer_only`): a
model trained on it sometimes answers without working, which costs it accuracy on problems it
could work out, and that behaviour is what its RL stage can learn away (README, RL).
"""

from __future__ import annotations

import json
import os
import random

ANSWER_ONLY = "<think>\n</think>\n\\boxed{%s}"  # an empty think block, then the boxed answer


def answer_only_mix(kept_path: str, out_path: str, fraction: float, seed: int) -> tuple[int, int]:
  """Copies a JSONL of records with `response` and `answer` to out_path with `fraction` of the
  responses (a seeded draw per record) replaced by the answer alone; returns (records,
  replaced). Written through a temporary file, so out_path is whole or absent."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"answer_only fraction {fraction} must be in [0, 1]")
  rng, records, replaced = random.Random(seed), 0, 0
  with open(kept_path) as src, open(out_path + ".tmp", "w") as out:
    for line in src:
      if not line.strip():
        continue
      record = json.loads(line)
      records += 1
      if rng.random() < fraction:
        record["response"] = ANSWER_ONLY % record["answer"]
        replaced += 1
      out.write(json.dumps(record) + "\n")
  os.replace(out_path + ".tmp", out_path)
  return records, replaced


def answered_without_working(completion: str) -> bool:
  """True when the think block closes before any working (an answer-only reply)."""
  head, sep, _ = completion.partition("</think>")
  return bool(sep) and not head.replace("<think>", "").strip()
