"""AOT memory plan of an RL run: policy, optimizer, reference, the sampler's KV cache, the step.

An RL step on one device goes through three phases, each with its own peak; what stays resident
across them is the train state (policy params + optimizer state) and, when rl.kl_coef > 0, a
frozen reference copy of the params:

  rollout  `sampling.sample` on `prompts x samples` rows: the KV cache of every row at
           cache_len = bucketed prompt_len + response_len (`model.decode.init_cache`: K and V per
           layer, [rows, kv_heads, cache_len, head_dim] in the compute dtype, rows over the batch
           and sequence axes, KV heads over tensor), the prompts' prefill cache it is gathered
           from, the per-layer compute-dtype weights (`decode.decode_params`) and the outputs;
           computed from those shapes (the sampler allocates them inside one jit);
  score    π_old (rl.old_policy=recompute) and reference log-probs: `step.jit_old_logprobs` on
           the whole rollout batch, as `rl_updates` calls it; AOT-compiled;
  update   `rl_step` jitted as `step.jit_rl_step` (state and batch shardings, donated state) on
           the packed batch, `num_microbatches` micro-batches; AOT-compiled.

Per-device peak = max over the phases, each = what is resident + the phase's own buffers (the
AOT figures already hold params and optimizer state as arguments). The same caveat as the SFT
planner (`motif_jax.memory_plan`): the CPU compiler's buffer assignment stands in for the GPU's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from motif_jax import memory_plan, sampling, trainer
from motif_jax import sharding as shd
from motif_jax.model import ModelConfig, abstract_params, param_shardings
from motif_jax.model import decode
from motif_jax.optim import OptimConfig, make_optimizer
from motif_jax.rl.config import RLConfig
from motif_jax.rl.step import RLStepConfig, jit_old_logprobs, jit_rl_step

FLOAT_KEYS = ("advantages", "behaviour_logprobs", "old_logprobs", "rewards", "passed",
              "truncated", "ref_logprobs", "sft_weights")


@dataclasses.dataclass(frozen=True)
class RLShape:
  """One rollout batch: `prompts x samples` trajectories of up to prompt_len + response_len
  tokens, sampled in one call, then packed into `rows x seq_len` rows for the update (the
  trainer's train.rows / train.seq_len, two or more trajectories may share a row), plus
  `sft_rows` packed SFT rows when rl.sft_coef > 0 (train.sft_rows)."""

  prompts: int
  samples: int
  prompt_len: int
  response_len: int
  rows: int
  seq_len: int
  num_microbatches: int = 1
  prefill_chunk: int = 512  # the sampler's prefill bucket (sampling.sample's prefill_chunk)
  sft_rows: int = 0

  def __post_init__(self):
    for name in ("prompts", "samples", "prompt_len", "response_len", "rows", "seq_len",
                 "num_microbatches", "prefill_chunk"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
    positions = self.prompt_len + self.response_len - 1  # tokens = ids[:-1]
    per_row = self.seq_len // positions
    if per_row * self.rows < self.trajectories:
      raise ValueError(f"rows={self.rows} x seq_len={self.seq_len} cannot hold prompts x samples"
                       f" = {self.trajectories} full-length trajectories of {positions} "
                       "positions (prompt_len + response_len - 1)")
    if self.rows % self.num_microbatches or self.sft_rows % self.num_microbatches:
      raise ValueError(f"rows={self.rows} and sft_rows={self.sft_rows} must be divisible by "
                       f"num_microbatches={self.num_microbatches}")

  @property
  def trajectories(self) -> int:
    """Sampler rows per rollout batch."""
    return self.prompts * self.samples

  @property
  def cache_len(self) -> int:
    """KV slots per row, as `sampling.sample` sizes them (bucketed prompt + response)."""
    return sampling.prefill_length(self.prompt_len, self.prefill_chunk) + self.response_len


def local_bytes(tree) -> int:
  """Per-device bytes of a tree of sharded `jax.ShapeDtypeStruct`s (one device's shards)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def abstract_rl_batch(mesh, model: ModelConfig, keys: Sequence[str], batch_size: int,
                      seq_len: int) -> dict:
  """ShapeDtypeStructs of a packed RL batch (`rl.packing` dtypes), sharded as the trainer's."""
  sharding = NamedSharding(mesh, shd.spec_for(("batch", None), model.sharding))
  return {k: jax.ShapeDtypeStruct((batch_size, seq_len),
                                  jnp.float32 if k in FLOAT_KEYS else jnp.int32,
                                  sharding=sharding) for k in keys}


def kv_cache_bytes(model: ModelConfig, mesh, *, rows: int, cache_len: int) -> int:
  """Per-device bytes of the sampler's KV cache for `rows` rows (padded to the row shards)."""
  cfg = sampling.sampling_config(model)
  spec = shd.activation_spec(decode.CACHE_AXES, cfg.sharding, mesh)
  shards = shd.shard_count("batch", cfg.sharding, dict(mesh.shape))
  shape = (-(-rows // shards) * shards, model.num_kv_heads, cache_len, model.head_dim)
  one = jax.ShapeDtypeStruct(shape, model.dtype, sharding=NamedSharding(mesh, spec))
  return 2 * model.num_layers * local_bytes(one)  # K and V per layer


def decode_weight_bytes(model: ModelConfig, mesh) -> int:
  """Per-device bytes of `decode.decode_params`' per-layer weights (matrices in model.dtype)."""
  shardings = param_shardings(model, mesh)["layers"]

  def cast(a, s):
    dtype = model.dtype if a.ndim >= 3 else a.dtype  # stacked [L, ...] matrices are cast
    return jax.ShapeDtypeStruct(a.shape, dtype, sharding=s)
  return local_bytes(jax.tree.map(cast, abstract_params(model)["layers"], shardings))


def rollout_output_bytes(model: ModelConfig, mesh, *, rows: int, response_len: int) -> int:
  """tokens (int32), logprobs and truncated logprobs (float32) per row and new token."""
  cfg = sampling.sampling_config(model)
  shards = shd.shard_count("batch", cfg.sharding, dict(mesh.shape))
  return 3 * 4 * -(-rows // shards) * response_len


def aot_rollout_memory(model: ModelConfig, mesh, shape: RLShape) -> dict:
  """Compiled per-device bytes of one `sampling.sample` call on `shape` (the jitted rollout on
  ShapeDtypeStructs, params sharded as the trainer's): checks the KV-cache figures above."""
  shards = shd.shard_count("batch", sampling.sampling_config(model).sharding, dict(mesh.shape))
  # One cache window, the sampler's default on accelerators (sampling_plan.default_window_slots).
  plan = sampling.make_plan(shape.prompts, shape.samples, shape.prompt_len,
                            max_new_tokens=shape.response_len,
                            prefill_chunk=shape.prefill_chunk, shards=shards, window_slots=0)
  with jax.set_mesh(mesh):
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_params(model), param_shardings(model, mesh))
    return memory_plan.compiled_bytes(sampling.lower(params, model, plan, mesh).compile())


def aot_rl_memory(model: ModelConfig, optim: OptimConfig, rl: RLConfig, mesh, *, seq_len: int,
                  batch_size: int, num_microbatches: int = 1, loss_impl: str = "xla") -> dict:
  """Compiled per-device bytes of the update (`rl_step`) and score (`jit_old_logprobs`) phases,
  with the per-device bytes of the params, optimizer state and batch they take."""
  optimizer, schedule = make_optimizer(optim)
  cfg = RLStepConfig(model, rl, num_microbatches, loss_impl)
  with jax.set_mesh(mesh):
    state, state_shardings = trainer.abstract_train_state(model, optimizer, 0, mesh)
    batch = abstract_rl_batch(mesh, model, cfg.batch_keys, batch_size, seq_len)
    batch_sharding = batch["tokens"].sharding
    update = jit_rl_step(cfg, optimizer, schedule, state_shardings, batch_sharding)
    score = jit_old_logprobs(cfg, state_shardings.params, batch_sharding)
    out = {"update": memory_plan.compiled_bytes(update.lower(state, batch).compile()),
           "score": memory_plan.compiled_bytes(score.lower(state.params, batch).compile())}
  out.update(param_bytes=local_bytes(state.params), optimizer_bytes=local_bytes(state.opt_state),
             batch_bytes=local_bytes(batch))
  return out


def plan_rl(model: ModelConfig, optim: OptimConfig, rl: RLConfig, mesh_shape: Mapping[str, int],
            shape: RLShape, *, remat: str, loss_impl: str = "xla",
            devices: Sequence[jax.Device] | None = None, fsdp_over_sequence: bool = True,
            budget_bytes: int | None = None, aot_rollout: bool = False) -> dict:
  """Per-device bytes of each RL phase and their peak, as the JSON the CLI writes.

  aot_rollout: take the rollout phase from the compiled sampler (`aot_rollout_memory`) instead
  of the cache shapes (slower to plan; the two agree within ~10%, tested).
  """
  seq_len = shape.seq_len
  model, mesh_shape = memory_plan.planned_model(model, mesh_shape, seq_len=seq_len, remat=remat,
                                                fsdp_over_sequence=fsdp_over_sequence)
  model = dataclasses.replace(model, max_seq_len=max(seq_len, shape.cache_len))
  mesh = shd.make_mesh(mesh_shape, devices)
  aot = aot_rl_memory(model, optim, rl, mesh, seq_len=seq_len,
                      batch_size=shape.rows + shape.sft_rows,
                      num_microbatches=shape.num_microbatches, loss_impl=loss_impl)
  params, opt = aot["param_bytes"], aot["optimizer_bytes"]
  reference = params if rl.kl_coef else 0  # a frozen copy of the policy params
  kv = kv_cache_bytes(model, mesh, rows=shape.trajectories, cache_len=shape.cache_len)
  sampler = {"kv_cache_bytes": kv,
             "prefill_cache_bytes": kv_cache_bytes(model, mesh, rows=shape.prompts,
                                                   cache_len=shape.cache_len),
             "decode_weight_bytes": decode_weight_bytes(model, mesh),
             "rollout_output_bytes": rollout_output_bytes(model, mesh, rows=shape.trajectories,
                                                          response_len=shape.response_len)}
  phases = {"rollout_bytes": params + opt + reference + sum(sampler.values()),
            # The update's AOT arguments hold the state and batch; the score pass's only the
            # params and the keys it reads (jit drops unused ones), the rest stays resident.
            "score_bytes": (params + opt + reference + aot["batch_bytes"]
                            + aot["score"]["output_bytes"] + aot["score"]["temp_bytes"]),
            "update_bytes": aot["update"]["per_device_bytes"] + reference}
  if aot_rollout:
    aot["rollout"] = aot_rollout_memory(model, mesh, shape)
    phases["rollout_bytes"] = aot["rollout"]["per_device_bytes"] + opt + reference
  out = {"step": "rl", "mesh": mesh_shape, "remat": remat, "devices": int(mesh.devices.size),
         "embed_axes": list(model.sharding.mesh_axes("embed")), **dataclasses.asdict(shape),
         "trajectories": shape.trajectories, "cache_len": shape.cache_len,
         "reference": bool(rl.kl_coef), "param_bytes": params, "optimizer_bytes": opt,
         "reference_bytes": reference, "batch_bytes": aot["batch_bytes"], **sampler,
         "update_temp_bytes": aot["update"]["temp_bytes"],
         "score_temp_bytes": aot["score"]["temp_bytes"],
         "aot": {k: v for k, v in aot.items() if k in ("update", "score", "rollout")},
         **phases}
  out["per_device_bytes"] = max(phases.values())
  out["peak_phase"] = max(phases, key=phases.get).removesuffix("_bytes")
  if budget_bytes is not None:
    out["budget_bytes"] = int(budget_bytes)
    out["fits"] = out["per_device_bytes"] <= budget_bytes
    # Sampler rows that fit beside the resident state and the decode weights, in one call whose
    # prompts take one prefill-cache row per device (a wave of at most one prompt per shard).
    per_row = kv_cache_bytes(model, mesh, rows=1, cache_len=shape.cache_len)  # one per device
    free = budget_bytes - (params + opt + reference + sampler["decode_weight_bytes"])
    shards = shd.shard_count("batch", sampling.sampling_config(model).sharding, mesh_shape)
    out["rollout_rows_that_fit"] = max(0, int(free // per_row) - 1) * shards
  return out


def format_rl(row: dict) -> str:
  """A short per-device breakdown, GiB."""
  gib = lambda k: row[k] / memory_plan.GIB  # noqa: E731
  mesh = ",".join(f"{k}={v}" for k, v in row["mesh"].items() if v > 1) or "single"
  lines = [f"RL step on {mesh} ({row['devices']} devices), remat={row['remat']}: "
           f"{row['prompts']} prompts x {row['samples']} samples = {row['trajectories']} "
           f"sampler rows of {row['cache_len']:,} KV slots; update batch {row['rows']} x "
           f"{row['seq_len']:,} tokens in {row['num_microbatches']} micro-batches",
           f"  params {gib('param_bytes'):.2f}  optimizer {gib('optimizer_bytes'):.2f}  "
           f"reference {gib('reference_bytes'):.2f}  batch {gib('batch_bytes'):.2f} GiB",
           f"  rollout: KV cache {gib('kv_cache_bytes'):.2f} + prefill cache "
           f"{gib('prefill_cache_bytes'):.2f} + decode weights {gib('decode_weight_bytes'):.2f}"
           f" -> {gib('rollout_bytes'):.2f} GiB",
           f"  score:   temp {gib('score_temp_bytes'):.2f} -> {gib('score_bytes'):.2f} GiB",
           f"  update:  temp {gib('update_temp_bytes'):.2f} -> {gib('update_bytes'):.2f} GiB",
           f"  total (peak, {row['peak_phase']}): {gib('per_device_bytes'):.2f} GiB per device"]
  if "fits" in row:
    lines[-1] += (f" {'fits' if row['fits'] else 'does NOT fit'} in "
                  f"{row['budget_bytes'] / memory_plan.GIB:.1f} GiB; sampler rows that fit "
                  f"beside the resident state: {row['rollout_rows_that_fit']:,}")
  return "\n".join(lines)
