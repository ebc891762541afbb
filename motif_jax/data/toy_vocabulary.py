"""The words of the toy corpus: the vocabulary of `data.tokenizer=toy` (tokenizer.WordTokenizer).

Every ASCII word that the toy generator writes (prompts of every domain, every teacher's
responses, the code domain's programs) on a fixed sample of problems of both ladders, sorted: a
pure function of the generator's code, so a saved model and a later run agree on the ids.
"""

from __future__ import annotations

import functools
import re

from motif_jax.data import toy_corpus
from motif_jax.data.config import ToyConfig
from motif_jax.data.toy_problems import DOMAINS, LADDERS

# Whole-number tokens 0..MAX_NUMBER-1: the `small` ladder's values (0-99 and lists of values up
# to 29) fit with room to spare; larger numbers are spelled in digits.
MAX_NUMBER = 200


@functools.lru_cache(maxsize=1)
def words() -> tuple[str, ...]:
  found: set[str] = set()
  for ladder in sorted(LADDERS):
    cfg = ToyConfig(seed=0, domains=DOMAINS, problems=40, min_steps=1, max_steps=8,
                    error_rate=0.5, format_error_rate=0.5, duplicate_rate=0.5,
                    reference_size=4, heldout_per_difficulty=1, ladder=ladder)
    for record in toy_corpus.corpus(cfg, toy_corpus.TEACHERS):
      found.update(re.findall(r"[A-Za-z]+", record.prompt + " " + record.response))
  return tuple(sorted(found))
