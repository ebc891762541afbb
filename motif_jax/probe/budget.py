"""Equal token budgets: every candidate's probe SFT trains on exactly the same number of
completion tokens, counted on the rows it is given, not assumed from a step count.

Records are taken in one seeded order of their prompts (so every candidate starts from the same
prompts), tokenized as SFT tokenizes them, and cut at `seq_len` tokens; the example that crosses
the budget keeps only its first completion tokens in the loss. The examples are packed into rows
by the SFT packer and batched; the last batch is padded with empty rows (segment 0, no loss).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import grain
import numpy as np

from motif_jax.data import packing
from motif_jax.data.records import Record
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Budgeted:
  batches: list[dict[str, np.ndarray]]  # [batch_size, seq_len] int32 rows (packing.ROW_KEYS)
  loss_tokens: int  # completion tokens in the loss, counted on `batches`
  packed_tokens: int  # prompt + completion tokens in the rows
  examples: int  # records used (the last one possibly cut)


def prompt_order(records: Sequence[Record], seed: int) -> list[Record]:
  """`records` sorted by a seeded hash of their prompt: the same prompts first in every set."""
  def key(record: Record) -> str:
    return hashlib.sha256(f"{seed}:{record.prompt}".encode("utf-8")).hexdigest()
  return sorted(records, key=key)


def completion_tokens(records: Sequence[Record], tokenizer: Tokenizer, template: ChatTemplate,
                      seq_len: int) -> int:
  """Completion tokens of `records` once each example is cut to `seq_len` tokens."""
  return sum(int(packing.tokenize_example(r, tokenizer, template)["loss_mask"][:seq_len].sum())
             for r in records)


def budget_examples(records: Sequence[Record], tokenizer: Tokenizer, template: ChatTemplate, *,
                    token_budget: int, seq_len: int) -> list[dict[str, np.ndarray]]:
  """Tokenized examples, in order, whose completion tokens sum to exactly `token_budget`."""
  out, used = [], 0
  for record in records:
    example = {k: v[:seq_len] for k, v in
               packing.tokenize_example(record, tokenizer, template).items()}
    mask = example["loss_mask"]
    room = token_budget - used
    if int(mask.sum()) > room:  # keep the first `room` completion tokens in the loss
      mask = np.where(np.cumsum(mask) <= room, mask, 0).astype(np.int32)
      example["loss_mask"] = mask
    used += int(mask.sum())
    out.append(example)
    if used == token_budget:
      return out
  raise ValueError(f"probe.token_budget={token_budget} exceeds the {used} completion tokens of "
                   f"the candidate's {len(records)} traces (cut at probe.seq_len={seq_len})")


def pack_batches(examples: Sequence[dict[str, np.ndarray]], *, seq_len: int, batch_size: int,
                 packing_bins: int) -> list[dict[str, np.ndarray]]:
  """The SFT packer's rows of `examples`, in batches of `batch_size` (the last one padded)."""
  ds = grain.MapDataset.source(list(examples)).to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  rows = list(packing.pack(ds, seq_len=seq_len, num_bins=packing_bins))
  pad = -len(rows) % batch_size
  rows += [{k: np.zeros((seq_len,), np.int32) for k in packing.ROW_KEYS}] * pad
  return [{k: np.stack([r[k] for r in rows[i:i + batch_size]]).astype(np.int32)
           for k in packing.ROW_KEYS} for i in range(0, len(rows), batch_size)]


def budgeted_batches(records: Sequence[Record], tokenizer: Tokenizer, template: ChatTemplate, *,
                     token_budget: int, seq_len: int, batch_size: int, packing_bins: int,
                     seed: int) -> Budgeted:
  """`records` in prompt order, cut to the budget, packed and batched; tokens counted after."""
  examples = budget_examples(prompt_order(records, seed), tokenizer, template,
                             token_budget=token_budget, seq_len=seq_len)
  batches = pack_batches(examples, seq_len=seq_len, batch_size=batch_size,
                         packing_bins=packing_bins)
  return Budgeted(batches=batches,
                  loss_tokens=int(sum(b["loss_mask"].sum() for b in batches)),
                  packed_tokens=int(sum((b["segment_ids"] > 0).sum() for b in batches)),
                  examples=len(examples))
