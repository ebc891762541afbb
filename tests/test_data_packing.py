"""Tokenization with a completion-only loss mask, and packing that never mixes segments."""

import collections

import grain
import numpy as np

from motif_jax.data.packing import ROW_KEYS, pack, tokenize_example
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import ByteTokenizer
from data_helpers import record

TEMPLATE = ChatTemplate()
TOK = ByteTokenizer(TEMPLATE.special_tokens())


def test_loss_mask_covers_the_completion_only():
  ex = tokenize_example(record("<think>a</think>b", prompt="hi"), TOK, TEMPLATE)
  # ids: <|user|> h i <|assistant|> <think> | a </think> b <|endoftext|>  (5 prompt + 4 completion)
  ids = [TOK.token_id("<|user|>"), ord("h"), ord("i"), TOK.token_id("<|assistant|>"),
         TOK.token_id("<think>"), ord("a"), TOK.token_id("</think>"), ord("b"),
         TOK.token_id("<|endoftext|>")]
  np.testing.assert_array_equal(ex["tokens"], ids[:-1])
  np.testing.assert_array_equal(ex["targets"], ids[1:])
  # Position 4 holds <think> and predicts "a", the first completion token.
  np.testing.assert_array_equal(ex["loss_mask"], [0, 0, 0, 0, 1, 1, 1, 1])
  assert TOK.decode(ex["targets"][ex["loss_mask"] == 1]) == "a</think>b<|endoftext|>"


def _examples(lengths, seq_len):
  rng = np.random.default_rng(0)
  out = []
  for i, n in enumerate(lengths):
    tokens = rng.integers(0, 250, n).astype(np.int32)
    tokens[0] = 1000 + i  # a tag that names the example
    mask = (np.arange(n) >= n // 2).astype(np.int32)
    out.append(dict(tokens=tokens[:seq_len], targets=(tokens + 1)[:seq_len],
                    loss_mask=mask[:seq_len]))
  return out


def test_packing_never_mixes_segments_and_keeps_every_example_once():
  seq_len, lengths = 32, [5, 17, 3, 30, 9, 12, 1, 25, 8, 14, 32, 6]
  examples = _examples(lengths, seq_len)
  ds = grain.MapDataset.source(examples).to_iter_dataset()
  rows = list(pack(ds, seq_len=seq_len, num_bins=3))
  found = collections.Counter()
  for row in rows:
    assert set(row) == set(ROW_KEYS) and all(v.shape == (seq_len,) for v in row.values())
    seg = row["segment_ids"]
    pad = seg == 0
    assert not row["loss_mask"][pad].any() and not row["tokens"][pad].any()
    # Segments are contiguous runs 1, 2, 3, ... followed only by padding.
    ids = seg[~pad]
    assert (np.diff(ids) >= 0).all() and set(ids) == set(range(1, ids.max() + 1))
    assert pad[len(ids):].all()
    for s in range(1, ids.max() + 1):
      where = seg == s
      ex = examples[row["tokens"][where][0] - 1000]
      for key in ("tokens", "targets", "loss_mask"):
        np.testing.assert_array_equal(row[key][where], ex[key])
      np.testing.assert_array_equal(row["positions"][where], np.arange(where.sum()))
      found[int(row["tokens"][where][0])] += 1
  assert found == {1000 + i: 1 for i in range(len(lengths))}
  assert sum(r["segment_ids"].astype(bool).sum() for r in rows) == sum(lengths)


def test_overlong_examples_are_cut_to_a_row():
  from motif_jax.data.packing import TokenizeExample
  long = record("<think>" + "x" * 100 + "</think>\\boxed{1}")
  ex = TokenizeExample(TOK, TEMPLATE, seq_len=16).map(long)
  full = tokenize_example(long, TOK, TEMPLATE)
  assert all(len(v) == 16 for v in ex.values()) and len(full["tokens"]) > 16
  np.testing.assert_array_equal(ex["tokens"], full["tokens"][:16])
