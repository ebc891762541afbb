"""The RL step: `rl_loss` and the pure, jittable `rl_step`, with `rl_updates` for PPO epochs.

A batch is a dict of [B, T] arrays, trajectories (prompt + completion) packed into rows:
tokens, targets, segment_ids, positions (as SFT), loss_mask (completion tokens only),
sequence_ids (per-row trajectory id, 0 = none; a trajectory never spans rows), advantages,
behaviour_logprobs (μ, the sampler's), old_logprobs (π_old, see `rl_updates`), rewards, passed,
truncated (per-trajectory values repeated on its tokens), domain_ids (index into rl.domains),
ref_logprobs when rl.kl_coef > 0, and sft_weights when rl.sft_coef > 0 (SFT rows appended by
`packing.add_sft_rows`: the step adds sum(sft_weights x -log π) to the loss, at the sampling
temperature).

Normalization is exact under micro-batching (sft.accumulate: float32 sums of per-token terms,
divided once): token level divides by the completion-token count of the whole global batch
(DAPO), sequence level weights each token by 1/|o_i| and divides by the global sequence count.
Non-finite steps are skipped and counted, as in SFT.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from motif_jax import losses
from motif_jax.model import ModelConfig, forward
from motif_jax.rl import objectives as obj
from motif_jax.rl.config import RLConfig
from motif_jax.sft import BATCH_KEYS as SFT_KEYS
from motif_jax.sft import split_microbatches, accumulate, apply_gradients
from motif_jax.train_state import TrainState
from pallas_kernels.fused_cross_entropy import BlockSizes

RL_KEYS = ("sequence_ids", "advantages", "behaviour_logprobs", "old_logprobs", "rewards",
           "passed", "truncated", "domain_ids")
_TOKEN_STATS = ("ratio", "kl_old", "entropy", "clip_low", "clip_high", "clip_dual", "is_raw",
                "is_capped")
_SEQ_STATS = ("rewards", "passed", "truncated", "advantages")
_DOMAIN_STATS = ("rewards", "passed", "truncated")


@dataclasses.dataclass(frozen=True)
class RLStepConfig:
  """Static settings of the step (hashable; bound at jit time)."""

  model: ModelConfig
  rl: RLConfig
  num_microbatches: int = 1
  loss_impl: str = "xla"  # fused log-prob kernel: xla | pallas | reference
  loss_block_sizes: BlockSizes = BlockSizes()

  @property
  def old_is_current(self) -> bool:
    """π_old is the params being updated: one update per rollout batch with π_old recomputed.
    The step then takes π_old as the stop-gradient of its own log-probs (ratio exactly 1), and
    `rl_updates` skips the separate scoring pass, which equals it (same params, same
    micro-batches) and cost a quarter of the step (bench_rl)."""
    return self.rl.old_policy == "recompute" and self.rl.updates_per_rollout == 1

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return (SFT_KEYS + RL_KEYS + (("ref_logprobs",) if self.rl.kl_coef else ())
            + (("sft_weights",) if self.rl.sft_coef else ()))


def policy_logprobs(params, batch: dict, cfg: RLStepConfig, mask_bt=None
                    ) -> tuple[jax.Array, jax.Array]:
  """(log π(target), entropy) per token at the sampling temperature; 0 off `mask_bt` (default
  the loss mask)."""
  hidden_btd = forward(params, batch["tokens"], cfg.model, segment_ids=batch["segment_ids"],
                       positions=batch["positions"])
  return losses.token_logprobs_and_entropy(
      params, hidden_btd, batch["targets"],
      batch["loss_mask"] if mask_bt is None else mask_bt, cfg.model,
      temperature=cfg.rl.temperature, impl=cfg.loss_impl, block_sizes=cfg.loss_block_sizes)


def _batch_stats(batch: dict, stats: dict, cfg: RLStepConfig) -> dict:
  """Sums (and maxima) of the statistics over one micro-batch; means are formed after."""
  mask = (batch["loss_mask"] > 0).astype(jnp.float32)
  seq_w = obj.token_weights(mask, batch["sequence_ids"], "sequence")
  domains_btd = jax.nn.one_hot(batch["domain_ids"], len(cfg.rl.domain_names), dtype=jnp.float32)
  sums = {"tokens": jnp.sum(mask), "sequences": obj.sequence_count(mask, batch["sequence_ids"])}
  sums |= {k: jnp.sum(mask * v) for k, v in stats.items()}
  sums |= {f"seq_{k}": jnp.sum(seq_w * batch[k]) for k in _SEQ_STATS}
  sums["seq_advantages_sq"] = jnp.sum(seq_w * jnp.square(batch["advantages"]))
  sums["domain_tokens"] = jnp.einsum("bt,btd->d", mask, domains_btd)
  sums["domain_sequences"] = jnp.stack([
      obj.sequence_count(mask * domains_btd[..., d], batch["sequence_ids"])
      for d in range(domains_btd.shape[-1])])
  for k in _DOMAIN_STATS:
    sums[f"domain_{k}"] = jnp.einsum("bt,btd->d", seq_w * batch[k], domains_btd)
  sums["domain_entropy"] = jnp.einsum("bt,btd->d", mask * stats["entropy"], domains_btd)
  maxes = {k: jnp.max(jnp.where(mask > 0, stats[k], 0.0)) for k in ("ratio", "is_raw")}
  return {"sum": sums, "max": maxes}


def rl_loss(params, batch: dict, cfg: RLStepConfig) -> tuple[jax.Array, dict]:
  """(sum of weighted per-token loss terms, statistics) for one (micro-)batch."""
  sft_w = batch.get("sft_weights")
  mask = None if sft_w is None else jnp.where(sft_w > 0, 1, batch["loss_mask"])
  logp_bt, entropy_bt = policy_logprobs(params, batch, cfg, mask)
  if cfg.old_is_current:
    batch = dict(batch, old_logprobs=jax.lax.stop_gradient(logp_bt))
  loss_bt, stats = obj.policy_loss_terms(logp_bt, entropy_bt, batch, cfg.rl)
  weights_bt = obj.token_weights(batch["loss_mask"], batch["sequence_ids"], cfg.rl.loss_level)
  loss, out = jnp.sum(weights_bt * loss_bt), _batch_stats(batch, stats, cfg)
  if sft_w is not None:  # the SFT term (PPO-ptx), pre-scaled on the host (packing.add_sft_rows)
    loss = loss - jnp.sum(sft_w * logp_bt)
    on_sft = (sft_w > 0).astype(jnp.float32)
    out["sum"] |= {"sft_tokens": jnp.sum(on_sft),
                   "sft_nll": -jnp.sum(on_sft * jax.lax.stop_gradient(logp_bt))}
  return loss, out


def _metrics(sums: dict, maxes: dict, cfg: RLStepConfig) -> dict:
  tokens, seqs = jnp.maximum(sums["tokens"], 1.0), jnp.maximum(sums["sequences"], 1.0)
  adv_mean = sums["seq_advantages"] / seqs
  m = {"rl/reward": sums["seq_rewards"] / seqs, "rl/pass_rate": sums["seq_passed"] / seqs,
       "rl/truncation": sums["seq_truncated"] / seqs, "rl/response_length": tokens / seqs,
       "adv/mean": adv_mean,
       "adv/std": jnp.sqrt(jnp.maximum(sums["seq_advantages_sq"] / seqs - adv_mean**2, 0.0)),
       "clip/low": sums["clip_low"] / tokens, "clip/high": sums["clip_high"] / tokens,
       "clip/dual": sums["clip_dual"] / tokens, "kl/old": sums["kl_old"] / tokens,
       "entropy": sums["entropy"] / tokens, "ratio/mean": sums["ratio"] / tokens,
       "ratio/max": maxes["ratio"], "is/mean": sums["is_raw"] / tokens, "is/max": maxes["is_raw"],
       "is/capped": sums["is_capped"] / tokens, "train/tokens": sums["tokens"],
       "train/sequences": sums["sequences"]}
  if cfg.rl.kl_coef:
    m["kl/ref"] = sums["kl_ref"] / tokens
  if cfg.rl.sft_coef:
    m["loss/sft"] = sums["sft_nll"] / jnp.maximum(sums["sft_tokens"], 1.0)
    m["train/sft_tokens"] = sums["sft_tokens"]
  for d, name in enumerate(cfg.rl.domain_names):
    n = jnp.maximum(sums["domain_sequences"][d], 1.0)
    m[f"domain/{name}/sequences"] = sums["domain_sequences"][d]
    m[f"domain/{name}/reward"] = sums["domain_rewards"][d] / n
    m[f"domain/{name}/pass_rate"] = sums["domain_passed"][d] / n
    m[f"domain/{name}/truncation"] = sums["domain_truncated"][d] / n
    m[f"domain/{name}/response_length"] = sums["domain_tokens"][d] / n
    m[f"domain/{name}/entropy"] = (sums["domain_entropy"][d]
                                   / jnp.maximum(sums["domain_tokens"][d], 1.0))
  return m


def rl_step(state: TrainState, batch: dict, *, cfg: RLStepConfig,
            optimizer: optax.GradientTransformation, schedule: optax.Schedule
            ) -> tuple[TrainState, dict]:
  """One optimizer step on the full-batch RL loss; non-finite steps are skipped."""
  loss_fn = lambda p, mb: rl_loss(p, mb, cfg)  # noqa: E731
  loss_sum, aux_m, grad_sum = accumulate(loss_fn, state.params,
                                         {k: batch[k] for k in cfg.batch_keys},
                                         num_microbatches=cfg.num_microbatches, model=cfg.model)
  sums = jax.tree.map(lambda x: jnp.sum(x, axis=0), aux_m["sum"])
  maxes = jax.tree.map(lambda x: jnp.max(x, axis=0), aux_m["max"])
  count = sums["tokens"] if cfg.rl.loss_level == "token" else sums["sequences"]
  denom = jnp.maximum(count, 1.0)
  loss = loss_sum / denom
  new_state, grad_norm = apply_gradients(state, grad_sum, denom, loss, optimizer)
  metrics = _metrics(sums, maxes, cfg) | {
      "loss/rl": loss, "grad/norm": grad_norm, "train/lr": schedule(state.step),
      "train/skipped": new_state.skipped_steps - state.skipped_steps,
      "train/bad_steps": new_state.bad_steps}
  return new_state, metrics


def jit_rl_step(cfg: RLStepConfig, optimizer, schedule, state_shardings=None,
                batch_sharding=None):
  """rl_step jitted once: state donated, in/out shardings when given (as the SFT trainer)."""
  kwargs = {}
  if state_shardings is not None:
    kwargs = dict(in_shardings=(state_shardings, batch_sharding),
                  out_shardings=(state_shardings, None))
  return jax.jit(functools.partial(rl_step, cfg=cfg, optimizer=optimizer, schedule=schedule),
                 donate_argnums=0, **kwargs)


def old_logprobs(params, batch: dict, cfg: RLStepConfig) -> jax.Array:
  """π_old (or reference) log-probs [B, T] of a batch: a forward pass without gradient, in
  cfg.num_microbatches strided micro-batches as the update takes them, so scoring a rollout
  batch never needs more activation memory than one micro-batch of the step."""
  keys = ("tokens", "targets", "segment_ids", "positions", "loss_mask")
  batch = {k: batch[k] for k in keys}
  m = cfg.num_microbatches
  if m == 1:
    return policy_logprobs(params, batch, cfg)[0]
  micro = split_microbatches(batch, m, cfg.model.sharding)
  logp_mbt = jax.lax.map(lambda mb: policy_logprobs(params, mb, cfg)[0], micro)
  b = batch["tokens"].shape[0]
  return logp_mbt.swapaxes(0, 1).reshape(b, *logp_mbt.shape[2:])  # undo the strided split


def jit_old_logprobs(cfg: RLStepConfig, params_shardings=None, batch_sharding=None):
  """`old_logprobs` jitted (in/out shardings when given)."""
  fn = functools.partial(old_logprobs, cfg=cfg)
  if params_shardings is None:
    return jax.jit(fn)
  return jax.jit(fn, in_shardings=(params_shardings, batch_sharding), out_shardings=batch_sharding)


def rl_updates(step_fn, state: TrainState, batch: dict, *, cfg: RLStepConfig,
               old_logprobs_fn=None) -> tuple[TrainState, list[dict]]:
  """rl.updates_per_rollout steps on one rollout batch with one π_old (PPO).

  rl.old_policy="behaviour": π_old = μ, the sampler's log-probs (TIS weights are 1).
  "recompute": π_old = the trainer's log-probs under the params before the first update
  (`old_logprobs_fn`), so the ratio starts at 1 and the TIS weight min(π_old/μ, tis_cap)
  corrects the sampler/trainer mismatch and the staleness of replayed trajectories; with one
  update per batch the step computes them itself (`RLStepConfig.old_is_current`).
  """
  if cfg.old_is_current:
    old = batch["behaviour_logprobs"]  # a placeholder: the step uses its own log-probs
  elif cfg.rl.old_policy == "recompute":
    if old_logprobs_fn is None:
      raise ValueError("rl.old_policy='recompute' needs old_logprobs_fn (jit_old_logprobs)")
    old = old_logprobs_fn(state.params, batch)
  else:
    old = batch["behaviour_logprobs"]
  batch = dict(batch, old_logprobs=old)
  metrics = []
  for _ in range(cfg.rl.updates_per_rollout):
    state, m = step_fn(state, batch)
    metrics.append(m)
  return state, metrics
