"""Tokenize prompt + completion and pack examples into fixed-length rows.

One example is `ids = encode(prompt) + encode(completion)` shifted by one:
`tokens = ids[:-1]`, `targets = ids[1:]`, `loss_mask[i] = 1` iff `targets[i]` is a completion
token, so the loss covers the reasoning, `</think>`, the answer and eos, never the prompt.

Rows come from Grain's first-fit packer (checkpointable, deterministic) and carry
  tokens, targets, loss_mask, segment_ids (1, 2, ... per example; 0 = padding), positions
(restart at 0 in every segment), all int32 [seq_len]. Padding has token 0, segment 0, mask 0.
An example longer than a row is cut to `seq_len` tokens (its tail is lost, its head is kept).
"""

from __future__ import annotations

import grain
import numpy as np
from grain import experimental as grain_exp

from motif_jax.data.records import Record
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import Tokenizer

FEATURES = ("tokens", "targets", "loss_mask")
ROW_KEYS = ("tokens", "targets", "segment_ids", "positions", "loss_mask")


def tokenize_example(record: Record, tokenizer: Tokenizer,
                     template: ChatTemplate) -> dict[str, np.ndarray]:
  prompt_ids = tokenizer.encode(template.record_prompt(record))
  completion_ids = tokenizer.encode(template.completion(record.response))
  ids = np.asarray(prompt_ids + completion_ids, np.int32)
  is_completion = np.arange(len(ids)) >= len(prompt_ids)
  return dict(tokens=ids[:-1], targets=ids[1:], loss_mask=is_completion[1:].astype(np.int32))


class TokenizeExample(grain.transforms.Map):
  """Record -> {tokens, targets, loss_mask}, cut to `seq_len` tokens."""

  def __init__(self, tokenizer: Tokenizer, template: ChatTemplate, seq_len: int):
    self.tokenizer, self.template, self.seq_len = tokenizer, template, seq_len

  def map(self, element: Record) -> dict[str, np.ndarray]:
    example = tokenize_example(element, self.tokenizer, self.template)
    return {k: v[:self.seq_len] for k, v in example.items()}


class _RowKeys(grain.transforms.Map):
  """Grain's `<feature>_segment_ids` / `_positions` (identical for all features) -> row keys."""

  def map(self, element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(tokens=element["tokens"], targets=element["targets"],
                segment_ids=element["tokens_segment_ids"], positions=element["tokens_positions"],
                loss_mask=element["loss_mask"])


def pack(examples: grain.IterDataset, *, seq_len: int, num_bins: int) -> grain.IterDataset:
  """Examples (at most `seq_len` tokens each) -> packed rows with the `ROW_KEYS`."""
  packed = grain_exp.FirstFitPackIterDataset(
      examples, length_struct={k: seq_len for k in FEATURES}, num_packing_bins=num_bins,
      shuffle_bins=False)
  return packed.map(_RowKeys())
