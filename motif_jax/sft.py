"""Supervised fine-tuning: `sft_loss` and the pure, jittable `sft_step`.

A batch is a dict of [B, T] int32 arrays: tokens, targets, segment_ids, positions, loss_mask
(motif_jax.data.pipeline). Gradient accumulation splits B into `num_microbatches` strided slices
(row m, m+M, ...: each micro-batch spans every batch shard), sums loss and gradients of the
token-loss *sums* in float32, and divides once by the token count of the whole batch: the
full-batch gradient, whatever the micro-batches' token counts (peers.md pain point 8).
A step whose loss or gradient is not finite leaves params and optimizer state unchanged and is
counted; the trainer stops after too many in a row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from motif_jax import losses
from motif_jax import sharding as shd
from motif_jax.model import ModelConfig, forward, param_specs
from motif_jax.train_state import TrainState
from pallas_kernels.fused_cross_entropy import BlockSizes

BATCH_KEYS = ("tokens", "targets", "segment_ids", "positions", "loss_mask")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """Static settings of the step (hashable; bound at jit time)."""

  model: ModelConfig
  num_microbatches: int = 1
  loss_impl: str = "xla"  # fused cross-entropy: xla | pallas | reference
  z_loss: float = 0.0
  loss_block_sizes: BlockSizes = BlockSizes()


def sft_loss(params, batch: dict, cfg: SFTConfig) -> tuple[jax.Array, dict]:
  """(sum of completion-token cross-entropies, {"tokens": count}) for one (micro-)batch."""
  hidden_btd = forward(params, batch["tokens"], cfg.model, segment_ids=batch["segment_ids"],
                       positions=batch["positions"])
  loss_sum, count = losses.next_token_loss(params, hidden_btd, batch["targets"],
                                           batch["loss_mask"], cfg.model, z_loss=cfg.z_loss,
                                           impl=cfg.loss_impl, block_sizes=cfg.loss_block_sizes)
  return loss_sum, {"tokens": count}


def split_microbatches(batch: dict, m: int, rules: shd.ShardingRules) -> dict:
  def split(x_bt):
    b = x_bt.shape[0]
    if b % m:
      raise ValueError(f"batch size {b} is not divisible by num_microbatches={m}")
    x_mbt = x_bt.reshape(b // m, m, *x_bt.shape[1:]).swapaxes(0, 1)
    return shd.constrain(x_mbt, (None, "batch", None), rules)
  return {k: split(v) for k, v in batch.items()}


def _sharded_zeros(params, model: ModelConfig):
  """Float32 zeros shaped and sharded like the params (unconstrained, XLA replicates them)."""
  mesh = jax.sharding.get_abstract_mesh()

  def zeros(p, spec):
    z = jnp.zeros(p.shape, jnp.float32)
    if mesh.empty:
      return z
    return jax.lax.with_sharding_constraint(
        z, shd.present_spec(shd.spec_for(spec.axes, model.sharding), mesh))
  return jax.tree.map(zeros, params, param_specs(model))


def accumulate(loss_fn, params, batch: dict, *, num_microbatches: int, model: ModelConfig):
  """Float32 sums over micro-batches of `loss_fn(params, micro_batch) -> (loss_sum, aux)`.

  Returns (loss_sum, aux with a leading [num_microbatches] axis on every leaf, grad_sum); every
  [B, ...] array of `batch` is split into strided micro-batches. Shared by the SFT and RL steps.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_microbatches == 1:  # no float32 accumulator: one full-size gradient tree less
    (loss, aux), grads = grad_fn(params, batch)
    return (loss, jax.tree.map(lambda a: a[None], aux),
            jax.tree.map(lambda g: g.astype(jnp.float32), grads))
  micro = split_microbatches(batch, num_microbatches, model.sharding)

  def body(carry, mb):
    loss_acc, grad_acc = carry
    (loss, aux), grads = grad_fn(params, mb)
    grad_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_acc, grads)
    return (loss_acc + loss, grad_acc), aux

  zeros = _sharded_zeros(params, model)
  (loss_sum, grad_sum), aux_m = jax.lax.scan(
      body, (jnp.zeros((), jnp.float32), zeros), micro)
  return loss_sum, aux_m, grad_sum


def accumulate_gradients(params, batch: dict, cfg: SFTConfig):
  """Float32 sums over micro-batches: (loss_sum, token_count, grad_sum)."""
  loss_fn = lambda p, mb: sft_loss(p, mb, cfg)  # noqa: E731
  loss_sum, aux_m, grad_sum = accumulate(loss_fn, params, {k: batch[k] for k in BATCH_KEYS},
                                         num_microbatches=cfg.num_microbatches, model=cfg.model)
  return loss_sum, jnp.sum(aux_m["tokens"]), grad_sum


def apply_gradients(state: TrainState, grad_sum, denom: jax.Array, loss: jax.Array,
                    optimizer: optax.GradientTransformation) -> tuple[TrainState, jax.Array]:
  """Optimizer update with gradient grad_sum / denom; a non-finite loss or gradient leaves params
  and optimizer state unchanged and is counted. Returns (new state, gradient norm)."""
  grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grad_sum, state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
  new_state = dataclasses.replace(
      state, step=state.step + 1, params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      bad_steps=jnp.where(finite, 0, state.bad_steps + 1),
      skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
  return new_state, grad_norm


def sft_step(state: TrainState, batch: dict, *, cfg: SFTConfig,
             optimizer: optax.GradientTransformation, schedule: optax.Schedule
             ) -> tuple[TrainState, dict]:
  """One optimizer step on the full-batch mean token loss; non-finite steps are skipped."""
  loss_sum, tokens, grad_sum = accumulate_gradients(state.params, batch, cfg)
  denom = jnp.maximum(tokens, 1.0)
  loss = loss_sum / denom
  new_state, grad_norm = apply_gradients(state, grad_sum, denom, loss, optimizer)
  skipped = new_state.skipped_steps - state.skipped_steps
  metrics = {"loss/ce": loss, "grad/norm": grad_norm, "train/tokens": tokens,
             "train/lr": schedule(state.step), "train/skipped": skipped,
             "train/bad_steps": new_state.bad_steps}
  return new_state, metrics
