"""AOT memory planner: per-device bytes of the real SFT train step, beside an analytic estimate.

`aot_memory` lowers and compiles `sft_step` exactly as `trainer.py` jits it (state and batch
shardings, donated state) on `jax.ShapeDtypeStruct` inputs, so nothing is allocated: a 12.7B
step at 64K tokens is planned on fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N`, set before jax is imported). The CPU
compiler's buffer assignment is a stand-in for the GPU one: the same program and shardings, but
a different fusion and scheduling, so read the AOT figure as ±10-20%, not to the byte.

`analytic_memory` is the back-of-envelope the AOT figure is checked against: parameters,
gradients and optimizer state from the sharded shapes (`model.accounting`), the activations a
remat policy saves per layer, and a one-layer working set for the backward pass.

`search` walks a small grid (mesh shapes x remat policies) in order of expected step cost and
returns every row, marking the first one that fits a budget.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from motif_jax import sharding as shd
from motif_jax import trainer
from motif_jax.model import ModelConfig, accounting
from motif_jax.optim import OptimConfig, make_optimizer
from motif_jax.sft import BATCH_KEYS, SFTConfig, sft_step

GIB = 2**30
# Cheapest first: less recomputation in the backward pass.
REMAT_ORDER = ("none", "dots", "qkv_attn_out", "offload", "attn_out", "full")


def rows_per_step(model: ModelConfig, mesh_shape: Mapping[str, int]) -> int:
  """Default global batch: one sequence per batch shard (data x fsdp)."""
  return shd.shard_count("batch", model.sharding, mesh_shape)


def abstract_batch(mesh, model: ModelConfig, batch_size: int, seq_len: int) -> dict:
  """ShapeDtypeStructs of a packed SFT batch, sharded as the trainer shards it."""
  sharding = NamedSharding(mesh, shd.spec_for(("batch", None), model.sharding))
  return {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=sharding)
          for k in BATCH_KEYS}


def aot_memory(model: ModelConfig, optim: OptimConfig, mesh, *, seq_len: int,
               batch_size: int, num_microbatches: int = 1, loss_impl: str = "xla") -> dict:
  """Compiled per-device bytes of one `sft_step` (argument, output, temp, alias, total)."""
  optimizer, schedule = make_optimizer(optim)
  with jax.set_mesh(mesh):
    state, state_shardings = trainer.abstract_train_state(model, optimizer, 0, mesh)
    batch = abstract_batch(mesh, model, batch_size, seq_len)
    step = jax.jit(functools.partial(sft_step, cfg=SFTConfig(model, num_microbatches, loss_impl),
                                     optimizer=optimizer, schedule=schedule),
                   in_shardings=(state_shardings, batch["tokens"].sharding),
                   out_shardings=(state_shardings, None), donate_argnums=0)
    return compiled_bytes(step.lower(state, batch).compile())


def compiled_bytes(compiled) -> dict:
  """Per-device argument, output, alias, temp and total bytes of a compiled function."""
  stats = compiled.memory_analysis()
  argument, output = stats.argument_size_in_bytes, stats.output_size_in_bytes
  alias, temp = stats.alias_size_in_bytes, stats.temp_size_in_bytes
  # Donated buffers are reused for the outputs: count them once.
  return {"argument_bytes": int(argument), "output_bytes": int(output),
          "alias_bytes": int(alias), "temp_bytes": int(temp),
          "per_device_bytes": int(argument + output - alias + temp)}


def _saved_width(model: ModelConfig, remat: str, tensor: int) -> float:
  """Activation elements saved per token per layer by a remat policy (tensor-sharded dims / tp)."""
  d, f = model.d_model, model.d_ff
  qkv = (model.num_heads + 2 * model.num_kv_heads) * model.head_dim / tensor
  attn_out = model.num_out_heads * model.value_dim / tensor
  saved = {"full": d, "attn_out": d + attn_out, "qkv_attn_out": d + qkv + attn_out,
           "offload": d,  # the rest lives in host memory
           "dots": d + qkv + attn_out + 2 * d + 3 * f / tensor}
  # No remat: everything the backward needs, float32 norm / PolyNorm temporaries included.
  saved["none"] = saved["dots"] + 8 * f / tensor + 4 * d
  return saved[remat]


def analytic_memory(model: ModelConfig, mesh_shape: Mapping[str, int], *, seq_len: int,
                    batch_size: int, optimizer_slots: int = 2) -> dict:
  """Per-device bytes from shapes: params, grads, optimizer, saved activations, working set."""
  params = accounting.param_bytes_per_device(model, mesh_shape)
  f32_params = params * 4 // jnp.dtype(model.param_dtype).itemsize
  batch_shards = shd.shard_count("batch", model.sharding, mesh_shape)
  tensor = shd.shard_count("ffw", model.sharding, mesh_shape)
  tokens = batch_size * seq_len / batch_shards / shd.shard_count("seq", model.sharding,
                                                                 mesh_shape)
  act = jnp.dtype(model.dtype).itemsize
  saved = tokens * model.num_layers * _saved_width(model, model.remat, tensor) * act
  # Backward of one layer: its recomputed activations (dots-level), float32 PolyNorm and norm
  # temporaries, and the residual stream gradient; the fused loss adds a few [tokens, d] f32.
  layer = tokens * (_saved_width(model, "dots", tensor) * act + 6 * model.d_ff / tensor * 4
                    + 4 * model.d_model * 4)
  loss = tokens * model.d_model * (act + 2 * 4)
  out = {"param_bytes": params, "grad_bytes": f32_params,  # one micro-batch: no accumulator
         "optimizer_bytes": optimizer_slots * f32_params,
         "saved_activation_bytes": int(saved), "working_set_bytes": int(max(layer, loss))}
  out["analytic_bytes"] = int(sum(out.values()))
  return out


def planned_model(model: ModelConfig, mesh_shape: Mapping[str, int], *, seq_len: int,
                  remat: str, fsdp_over_sequence: bool = True
                  ) -> tuple[ModelConfig, dict[str, int]]:
  """(model with the remat policy and sequence length, the full mesh shape) for one cell."""
  model = dataclasses.replace(model, remat=remat, max_seq_len=seq_len)
  mesh_shape = {a: int(mesh_shape.get(a, 1)) for a in shd.MESH_AXES}
  embed = model.sharding.mesh_axes("embed")
  if fsdp_over_sequence and mesh_shape["sequence"] > 1 and "sequence" not in embed:
    # Context-parallel ranks also hold a slice of the weights (ZeRO-3 over fsdp x sequence).
    model = dataclasses.replace(model, sharding=dataclasses.replace(
        model.sharding, embed=embed + ("sequence",)))
  return model, mesh_shape


def plan(model: ModelConfig, optim: OptimConfig, mesh_shape: Mapping[str, int], *, seq_len: int,
         remat: str, batch_size: int | None = None, loss_impl: str = "xla",
         devices: Sequence[jax.Device] | None = None, fsdp_over_sequence: bool = True) -> dict:
  """AOT and analytic figures for one (mesh, remat) cell, as the JSON the CLI writes.

  fsdp_over_sequence: on a mesh with sequence > 1, shard weights over it too (`embed`).
  """
  model, mesh_shape = planned_model(model, mesh_shape, seq_len=seq_len, remat=remat,
                                    fsdp_over_sequence=fsdp_over_sequence)
  batch_size = batch_size or rows_per_step(model, mesh_shape)
  mesh = shd.make_mesh(mesh_shape, devices)
  out = {"mesh": mesh_shape, "remat": remat, "seq_len": seq_len, "batch_size": batch_size,
         "devices": int(mesh.devices.size), "embed_axes": list(model.sharding.mesh_axes("embed"))}
  out.update(aot_memory(model, optim, mesh, seq_len=seq_len, batch_size=batch_size,
                        loss_impl=loss_impl))
  optimizer_slots = 2 if optim.name == "adamw" else 1
  out.update(analytic_memory(model, mesh_shape, seq_len=seq_len, batch_size=batch_size,
                             optimizer_slots=optimizer_slots))
  return out


def candidate_meshes(devices: int, model: ModelConfig) -> list[dict[str, int]]:
  """A small grid for `devices`: FSDP alone, then with sequence and/or tensor parallelism."""
  out = []
  for tensor, sequence in ((1, 1), (1, 2), (2, 1), (1, 4), (2, 2), (4, 1), (1, 8)):
    if devices % (tensor * sequence):
      continue
    shape = dict(data=1, fsdp=devices // (tensor * sequence), tensor=tensor, sequence=sequence)
    if model.num_kv_heads % tensor == 0 and model.d_ff % tensor == 0:
      out.append(shape)
  return out


def search(model: ModelConfig, optim: OptimConfig, *, devices: int, seq_len: int,
           budget_bytes: int, remats: Sequence[str] = ("qkv_attn_out", "attn_out", "full"),
           loss_impl: str = "xla", log=print) -> list[dict]:
  """Plans every (remat, mesh) cell, cheapest first; the first that fits has `chosen=True`."""
  rows, chosen = [], False
  for remat in sorted(remats, key=REMAT_ORDER.index):
    for shape in candidate_meshes(devices, model):
      row = plan(model, optim, shape, seq_len=seq_len, remat=remat, loss_impl=loss_impl)
      row["fits"] = row["per_device_bytes"] <= budget_bytes
      row["chosen"] = row["fits"] and not chosen
      chosen = chosen or row["fits"]
      log(format_row(row))
      rows.append(row)
  return rows


def format_row(row: dict) -> str:
  mesh = ",".join(f"{k}={v}" for k, v in row["mesh"].items() if v > 1) or "single"
  mark = " <- cheapest that fits" if row.get("chosen") else ""
  return (f"{mesh:<28}{row['remat']:<14}{row['per_device_bytes'] / GIB:>10.2f}"
          f"{row['temp_bytes'] / GIB:>10.2f}{row['analytic_bytes'] / GIB:>10.2f}{mark}")


TABLE_HEADER = f"{'mesh':<28}{'remat':<14}{'AOT GiB':>10}{'temp GiB':>10}{'est. GiB':>10}"
