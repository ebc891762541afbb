"""Token losses over the model's hidden states, through the fused cross-entropy kernels.

`[tokens, vocab]` logits are never built (pallas_kernels.fused_cross_entropy). Losses return
sums and token counts, not means, so callers normalize by the true token count of the whole
(global, micro-batched) batch.

Sharding note: under a mesh (`jax.set_mesh`) the loss runs per shard
(`motif_jax.parallel.loss`): each device computes its own tokens (batch over data/fsdp, sequence
over sequence) against its own vocab slice of the head (tensor), combining per-token statistics
across the vocab shards; GSPMD would otherwise gather the token axis and repeat the LM-head work
on every device. Without a mesh it is the plain fused kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from motif_jax.model import ModelConfig, unembed_matrix
from motif_jax.parallel.loss import sharded_fused_cross_entropy
from pallas_kernels.fused_cross_entropy import BlockSizes


def _flat_token_stats(params, hidden_btd, targets_bt, mask_bt, cfg, *, temperature, z_loss,
                      impl, block_sizes):
  w_dv = unembed_matrix(params, cfg).astype(cfg.dtype)
  return sharded_fused_cross_entropy(
      hidden_btd.astype(cfg.dtype), w_dv, targets_bt, mask_bt.astype(jnp.float32),
      rules=cfg.sharding, temperature=temperature, z_loss=z_loss, impl=impl,
      block_sizes=block_sizes)


def next_token_loss(params: dict, hidden_btd: jax.Array, targets_bt: jax.Array,
                    mask_bt: jax.Array, cfg: ModelConfig, *, z_loss: float = 0.0,
                    impl: str = "xla", block_sizes: BlockSizes = BlockSizes()
                    ) -> tuple[jax.Array, jax.Array]:
  """(sum of masked token cross-entropies, number of counted tokens), both float32.

  targets_bt are the next tokens (already shifted); tokens with mask 0 or a target outside the
  vocabulary (e.g. -100) are not counted.
  """
  loss_bt, _ = _flat_token_stats(params, hidden_btd, targets_bt, mask_bt, cfg, temperature=1.0,
                                 z_loss=z_loss, impl=impl, block_sizes=block_sizes)
  valid_bt = (mask_bt > 0) & (targets_bt >= 0) & (targets_bt < cfg.vocab_size)
  return jnp.sum(loss_bt), jnp.sum(valid_bt.astype(jnp.float32))


def token_logprobs_and_entropy(params: dict, hidden_btd: jax.Array, targets_bt: jax.Array,
                               mask_bt: jax.Array, cfg: ModelConfig, *, temperature: float = 1.0,
                               impl: str = "xla", block_sizes: BlockSizes = BlockSizes()
                               ) -> tuple[jax.Array, jax.Array]:
  """Per-token log π(target) and policy entropy at the sampling temperature (0 where masked).

  Both are differentiable (policy gradient through the log-probs, entropy bonus through the
  entropy).
  """
  loss_bt, entropy_bt = _flat_token_stats(params, hidden_btd, targets_bt, mask_bt, cfg,
                                          temperature=temperature, z_loss=0.0, impl=impl,
                                          block_sizes=block_sizes)
  return -loss_bt, entropy_bt
