"""GPU check, part 3: a real SFT step of a ~1B-parameter Motif-architecture model.

The model is configs/motif2_12b.py at smaller width and depth (d_model 1536, 8 layers, MLP 6144;
the same 40 / 16 GDA head layout, head dim 128, PolyNorm, untied 219,520-token vocabulary:
about 1.1B parameters, 0.67B of them embeddings), bf16 compute, float32 master weights, AdamW,
Pallas attention and fused loss. `sft_step` is jitted as `trainer.py` jits it (state and batch
shardings on a one-device mesh, donated state). One sequence per step, one segment (so the
causal FLOP count holds), at 8K and 32K tokens; remat `full`, then `offload`.

MFU = 3 x forward FLOPs per token (model/accounting.py: matmuls + causal-halved attention; the
recomputed forward of remat is not credited) x tokens/s over the chip's dense bf16 peak.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from configs import motif2_12b
from motif_jax import sharding as shd
from motif_jax.bench import gpu_measure as gm
from motif_jax.bench.gpu_harness import PartContext
from motif_jax.model import ModelConfig, accounting, init_params
from motif_jax.model.transformer import positions_from_segments
from motif_jax.optim import OptimConfig, make_optimizer
from motif_jax.sft import SFTConfig, sft_step
from motif_jax.train_state import init_train_state

environment = gm.environment
ONE_B = dict(d_model=1536, num_layers=8, d_ff=6144)


def motif_model(*, smoke: bool, seq: int, remat: str, attention_impl: str) -> ModelConfig:
  """configs/motif2_12b.py scaled to ~1B (or its CPU smoke variant), with the run settings."""
  config = motif2_12b.get_config("smoke" if smoke else None)
  config.model.update(dict(max_seq_len=seq, remat=remat, attention_impl=attention_impl))
  if not smoke:
    config.model.update(ONE_B)
  return ModelConfig.from_config_dict(config.model)


def random_batch(vocab: int, seq: int, seed: int = 0) -> dict:
  """One row, one segment of random tokens; every target counted."""
  tokens = jax.random.randint(jax.random.key(seed), (1, seq + 1), 0, vocab, jnp.int32)
  segment_ids = jnp.zeros((1, seq), jnp.int32)
  return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": segment_ids,
          "positions": positions_from_segments(segment_ids),
          "loss_mask": jnp.ones((1, seq), jnp.int32)}


def bench_step(model: ModelConfig, *, seq: int, loss_impl: str, steps: int) -> dict:
  from motif_jax import trainer  # here: it loads Orbax and Grain, which the sampler part skips
  peak_before = gm.memory_stats().get("peak_bytes_in_use")
  mesh = shd.make_mesh({}, devices=jax.devices()[:1])
  optimizer, schedule = make_optimizer(OptimConfig())
  with jax.set_mesh(mesh):
    _, state_shardings = trainer.abstract_train_state(model, optimizer, 0, mesh)
    batch_sharding = NamedSharding(mesh, shd.spec_for(("batch", None), model.sharding))
    params = init_params(jax.random.key(0), model, mesh)
    state = jax.jit(functools.partial(init_train_state, optimizer=optimizer),
                    out_shardings=state_shardings)(params)
    del params
    batch = jax.device_put(random_batch(model.vocab_size, seq), batch_sharding)
    step = jax.jit(functools.partial(sft_step, cfg=SFTConfig(model, 1, loss_impl),
                                     optimizer=optimizer, schedule=schedule),
                   in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, None), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    times, losses = [], []
    for i in range(steps + 1):  # the first step is the warm-up
      start = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      if i:
        times.append(time.perf_counter() - start)
      losses.append(float(metrics["loss/ce"]))
  step_s = float(np.median(times))
  flops_per_token = 3 * accounting.forward_flops_per_token(model, seq)["total"]
  tokens_per_s = seq / step_s
  peak = gm.peak_bf16_flops(jax.devices()[0].device_kind)
  n_params = sum(accounting.param_breakdown(model).values())
  return {"kind": "sft_step", "seq": seq, "remat": model.remat, "params": n_params,
          "attention_impl": model.attention_impl, "loss_impl": loss_impl,
          "step_s": step_s, "min_s": min(times), "max_s": max(times), "steps": steps,
          "compile_s": compile_s, "tokens_per_s": tokens_per_s,
          "model_tflops": flops_per_token * tokens_per_s / 1e12,
          "mfu": None if peak is None else flops_per_token * tokens_per_s / peak,
          "losses": losses, "loss_finite": bool(np.isfinite(losses).all()),
          "temp_bytes": int(memory.temp_size_in_bytes),
          "host_temp_bytes": int(getattr(memory, "host_temp_size_in_bytes", 0)),
          "argument_bytes": int(memory.argument_size_in_bytes), **gm.peak_figures(peak_before)}


def cases(ctx: PartContext):
  """8K full first (the MFU target); then 32K offload before 32K full, so that each raises the
  allocator's running peak and both 32K peaks are their own (gpu_measure.peak_figures)."""
  if ctx.dry_run:
    runs, impl, steps = (("full", 64), ("offload", 64)), "xla", 1
  else:
    runs = (("full", 8192), ("offload", 32_768), ("full", 32_768), ("offload", 8192))
    impl, steps = "pallas", 3
  for remat, seq in runs:
    model = motif_model(smoke=ctx.dry_run, seq=seq, remat=remat, attention_impl=impl)
    size = "smoke" if ctx.dry_run else "1B"
    yield (f"sft_step {size} S={seq} remat={remat}",
           functools.partial(bench_step, model, seq=seq, loss_impl=impl, steps=steps))
