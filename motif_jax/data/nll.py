"""The target model's mean per-token NLL on a trace's completion: the optional style feature.

A trace the target model finds surprising (high NLL) is far from what it would write itself; this
is the "alignment" measure of recipe §4. Each record is scored alone in a padded row (segment 0 =
padding), in fixed-shape batches so one compilation serves the whole sample.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from motif_jax.data.packing import tokenize_example
from motif_jax.data.records import Record
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import Tokenizer
from motif_jax.model import ModelConfig, forward_logits


@functools.partial(jax.jit, static_argnames=("cfg",))
def completion_nll(params: dict, tokens_bt: jax.Array, targets_bt: jax.Array,
                   mask_bt: jax.Array, segment_ids_bt: jax.Array, cfg: ModelConfig) -> jax.Array:
  """[b] mean NLL of the masked targets of each row (float32)."""
  logits_btv = forward_logits(params, tokens_bt, cfg, segment_ids=segment_ids_bt)
  logp_btv = jax.nn.log_softmax(logits_btv, axis=-1)
  nll_bt = -jnp.take_along_axis(logp_btv, targets_bt[..., None], axis=-1)[..., 0]
  mask_bt = mask_bt.astype(jnp.float32)
  return (nll_bt * mask_bt).sum(-1) / jnp.maximum(mask_bt.sum(-1), 1.0)


def make_nll_scorer(params: dict, cfg: ModelConfig, tokenizer: Tokenizer, template: ChatTemplate,
                    *, seq_len: int, batch_size: int) -> Callable[[Sequence[Record]], list[float]]:
  """records -> their completion NLLs under the model (completions cut at `seq_len` tokens)."""

  def score(records: Sequence[Record]) -> list[float]:
    out: list[float] = []
    for start in range(0, len(records), batch_size):
      rows = {k: np.zeros((batch_size, seq_len), np.int32)
              for k in ("tokens", "targets", "loss_mask", "segment_ids")}
      chunk = records[start:start + batch_size]
      for i, record in enumerate(chunk):
        example = tokenize_example(record, tokenizer, template)
        n = min(seq_len, len(example["tokens"]))
        for key in ("tokens", "targets", "loss_mask"):
          rows[key][i, :n] = example[key][:n]
        rows["segment_ids"][i, :n] = 1
      nll_b = completion_nll(params, rows["tokens"], rows["targets"], rows["loss_mask"],
                             rows["segment_ids"], cfg)
      out.extend(np.asarray(nll_b)[:len(chunk)].tolist())
    return out

  return score
