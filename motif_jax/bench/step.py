"""Training-step benchmark: the real jitted `sft_step`, warm, against counted FLOPs and a matmul.

`run(config)` builds the step exactly as `motif_jax.trainer` jits it (a one-device mesh, in/out
shardings from `trainer.abstract_train_state`, the state donated), times `bench.steps` warm steps
after `bench.warmup`, and reports tokens/s, achieved GFLOP/s against the model's counted FLOPs
(`model.accounting`: training = 3x the forward), the best of the largest MLP matmul
([b*t, d] x [d, f]) in its three training orientations on this machine, and a per-piece
breakdown (`step_pieces`). Steps are added to `STEP_BUILDERS` by name; `rl_step` joins when it
exists (issue 18). Measuring code, not library code.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from motif_jax import sharding as shd
from motif_jax import trainer, typed_config
from motif_jax.bench import gpu_measure, step_pieces
from motif_jax.data import pipeline
from motif_jax.model import ModelConfig, accounting, count_params, init_params
from motif_jax.optim import OptimConfig, make_optimizer
from motif_jax.sft import SFTConfig, sft_step
from motif_jax.train_state import init_train_state


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  name: str
  batch_size: int
  seq_len: int
  num_microbatches: int
  loss_impl: str
  warmup: int
  steps: int
  piece_rounds: int
  matmul_reps: int
  seed: int

  def __post_init__(self):
    for field in ("batch_size", "seq_len", "num_microbatches", "steps", "matmul_reps"):
      if getattr(self, field) < 1:
        raise ValueError(f"bench.{field}={getattr(self, field)} must be >= 1")
    for field in ("warmup", "piece_rounds"):
      if getattr(self, field) < 0:
        raise ValueError(f"bench.{field}={getattr(self, field)} must be >= 0")


def random_batch(model: ModelConfig, bench: BenchConfig, seed: int) -> dict[str, np.ndarray]:
  """Random tokens in the packer's layout (targets = next token, one segment per row)."""
  b, t = bench.batch_size, bench.seq_len
  ids = np.random.default_rng(seed).integers(1, model.vocab_size, size=(b, t + 1),
                                              dtype=np.int32)
  return {"tokens": ids[:, :-1].copy(), "targets": ids[:, 1:].copy(),
          "segment_ids": np.ones((b, t), np.int32),
          "positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
          "loss_mask": np.ones((b, t), np.int32)}


def build_sft_step(model: ModelConfig, optim: OptimConfig, bench: BenchConfig, mesh
                   ) -> tuple[Callable, Callable]:
  """(init_fn(params) -> state, step_fn(state, batch)): trainer._train's jit, verbatim."""
  optimizer, schedule = make_optimizer(optim)
  _, state_shardings = trainer.abstract_train_state(model, optimizer, bench.seed, mesh)
  batch_sharding = NamedSharding(mesh, shd.spec_for(("batch", None), model.sharding))
  step_fn = jax.jit(
      functools.partial(sft_step, cfg=SFTConfig(model, bench.num_microbatches, bench.loss_impl),
                        optimizer=optimizer, schedule=schedule),
      in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, None),
      donate_argnums=0)
  init_fn = jax.jit(functools.partial(init_train_state, optimizer=optimizer, seed=bench.seed),
                    out_shardings=state_shardings)
  return init_fn, step_fn


# Named training steps the benchmark can time; "rl" joins when motif_jax.rl.step.rl_step exists.
STEP_BUILDERS: dict[str, Callable] = {"sft": build_sft_step}


def _summary(seconds: list[float]) -> dict:
  return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
          "all_s": seconds}


def time_step(step_fn, state, batches: list[dict], warmup: int, steps: int) -> tuple[dict, dict]:
  """(wall and process-CPU seconds per warm step, last metrics); the first call compiles."""
  t0 = time.perf_counter()
  state, metrics = step_fn(state, batches[0])
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - t0
  wall, cpu = [], []
  for i in range(warmup + steps):
    w0, c0 = time.perf_counter(), time.process_time()
    state, metrics = step_fn(state, batches[(i + 1) % len(batches)])
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      wall.append(time.perf_counter() - w0)
      cpu.append(time.process_time() - c0)
  host = {k: float(v) for k, v in jax.device_get(metrics).items()}
  return {"compile_and_first_s": compile_s, "wall": _summary(wall), "cpu": _summary(cpu)}, host


def step_flops(model: ModelConfig, bench: BenchConfig) -> dict[str, float]:
  """Counted FLOPs of one training step: 3x the forward (model.accounting) over b*t tokens."""
  per_token = accounting.forward_flops_per_token(model, bench.seq_len)
  tokens = bench.batch_size * bench.seq_len
  return {"forward_per_token": per_token["total"], "tokens": tokens,
          "train_step": 3.0 * per_token["total"] * tokens}


def best_matmul(model: ModelConfig, bench: BenchConfig) -> dict:
  """GFLOP/s of the largest MLP matmul, [b*t, d] x [d, f], as forward, dX and dW (best counts)."""
  m, d, f = bench.batch_size * bench.seq_len, model.d_model, model.d_ff
  dtype = jnp.dtype(model.dtype)
  keys = jax.random.split(jax.random.key(bench.seed), 3)
  x_md = jax.random.normal(keys[0], (m, d), dtype)
  w_df = jax.random.normal(keys[1], (d, f), dtype)
  g_mf = jax.random.normal(keys[2], (m, f), dtype)
  cases = {
      "forward [m,d]x[d,f]": (jax.jit(lambda x, w: x @ w), x_md, w_df),
      "dX [m,f]x[d,f]^T": (jax.jit(lambda g, w: g @ w.T), g_mf, w_df),
      "dW [m,d]^T x[m,f]": (jax.jit(lambda x, g: x.T @ g), x_md, g_mf),
  }
  flops = 2.0 * m * d * f
  out = {"shape": {"m": m, "d": d, "f": f, "dtype": str(dtype)}, "flops": flops}
  for name, (fn, a, b) in cases.items():
    min_s = gpu_measure.time_stats(fn, (a, b), repeats=bench.matmul_reps)["min_s"]
    out[name] = {"min_s": min_s, "gflops_best": flops / min_s / 1e9}
  out["gflops_best"] = max(v["gflops_best"] for v in out.values() if isinstance(v, dict)
                           and "gflops_best" in v)
  return out


def matmul_floor(model: ModelConfig, bench: BenchConfig) -> dict:
  """The step's weight matmuls alone: every [b*t, in] x [in, out] of `accounting.matmul_shapes`
  forward, as dX and as dW, in one jitted function (no attention core, norms, activations, loss
  or optimizer). Its time bounds the step from below on this machine; the step's excess over it
  is everything else."""
  m, dtype = bench.batch_size * bench.seq_len, jnp.dtype(model.dtype)
  shapes = accounting.matmul_shapes(model)
  key = jax.random.key(bench.seed)
  inputs = {d: jax.random.normal(jax.random.fold_in(key, 2 * d), (m, d), dtype)
            for d in sorted({d for d, _ in shapes})}
  weights = [jax.random.normal(jax.random.fold_in(key, 2 * i + 1), s, dtype) * 0.02
             for i, s in enumerate(shapes)]

  @jax.jit
  def dots(inputs, weights):
    total = jnp.zeros((), jnp.float32)
    for w_io in weights:
      x_ti = inputs[w_io.shape[0]]
      y_to = x_ti @ w_io  # forward; its output stands in for the cotangent below
      total += jnp.sum(y_to @ w_io.T) + jnp.sum(x_ti.T @ y_to)  # dX, dW
    return total
  times = gpu_measure.time_stats(dots, (inputs, weights), repeats=bench.matmul_reps)
  flops = 3.0 * sum(2.0 * m * d_in * d_out for d_in, d_out in shapes)
  return {"dots": 3 * len(shapes), "flops": flops, "min_s": times["min_s"],
          "median_s": times["median_s"], "gflops_best": flops / times["min_s"] / 1e9}


def attention_floor(model: ModelConfig, bench: BenchConfig) -> dict:
  """One layer's dense attention core alone, forward and backward: the six batched dots (q.k,
  p.v; dP, dV, dQ, dK) over [b*kv_heads, (heads/kv_heads)*t, head_dim] queries against
  [b*kv_heads, t, head_dim] keys (the gqa core's shapes; diff and gda run two such cores), and
  the softmax's forward + backward on its [.., t] rows. Causal tiles do a fraction of this
  work (3/4 at two 128-token tiles, 1/2 at best)."""
  dtype = jnp.dtype(model.dtype)
  batch = bench.batch_size * model.num_kv_heads
  rows = model.num_heads // model.num_kv_heads * bench.seq_len
  s, h, v = bench.seq_len, model.head_dim, model.value_dim
  keys = jax.random.split(jax.random.key(bench.seed), 5)
  q, k = (jax.random.normal(keys[0], (batch, rows, h), dtype),
          jax.random.normal(keys[1], (batch, s, h), dtype))
  val, do = (jax.random.normal(keys[2], (batch, s, v), dtype),
             jax.random.normal(keys[3], (batch, rows, v), dtype))
  logits = jax.random.normal(keys[4], (batch, rows, s), jnp.float32)

  @jax.jit
  def dots(q, k, val, do):
    p = jnp.einsum("bmh,bsh->bms", q, k)
    dp = jnp.einsum("bmv,bsv->bms", do, val)
    return (jnp.einsum("bms,bsv->bmv", p, val), jnp.einsum("bms,bmv->bsv", p, do),
            jnp.einsum("bms,bsh->bmh", dp, k), jnp.einsum("bms,bmh->bsh", dp, q))

  @jax.jit
  def softmax(logits):
    probs, pullback = jax.vjp(lambda x: jax.nn.softmax(x, axis=-1), logits)
    return probs, pullback(probs)
  out = {"shape": {"batch": batch, "rows": rows, "keys": s, "head_dim": h, "value_dim": v},
         "flops": 2.0 * batch * rows * s * (3 * h + 3 * v)}
  for name, fn, args in (("dots", dots, (q, k, val, do)), ("softmax", softmax, (logits,))):
    out[f"{name}_min_s"] = gpu_measure.time_stats(fn, args, repeats=bench.matmul_reps)["min_s"]
  out["dots_gflops_best"] = out["flops"] / out["dots_min_s"] / 1e9
  return out


def run(config, *, step: str = "sft") -> dict:
  """The whole benchmark for one preset (a ConfigDict with model, optim, bench sections)."""
  model = ModelConfig.from_config_dict(config.model)
  optim = OptimConfig.from_config_dict(config.optim)
  bench = typed_config.build(BenchConfig, config.bench, "bench")
  if step not in STEP_BUILDERS:
    raise ValueError(f"--step={step!r}: one of {sorted(STEP_BUILDERS)} (rl_step does not exist "
                     "yet; add it to STEP_BUILDERS when it does)")
  mesh = shd.make_mesh(shd.parse_mesh(""))  # one device, as the CPU runs and the peers' harness
  result = {
      "preset": bench.name, "step": step, "bench": dataclasses.asdict(bench),
      "model": {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                if f.name != "sharding"},
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "backend": jax.default_backend(), "device": str(jax.devices()[0]),
      "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      "load_average": list(os.getloadavg()),
  }
  with jax.set_mesh(mesh):
    params = init_params(jax.random.key(bench.seed), model, mesh)
    result["param_count"] = count_params(params)
    batch_sharding = NamedSharding(mesh, shd.spec_for(("batch", None), model.sharding))
    batches = [pipeline.make_global_batch(random_batch(model, bench, bench.seed + i),
                                          batch_sharding) for i in range(2)]
    init_fn, step_fn = STEP_BUILDERS[step](model, optim, bench, mesh)
    state = init_fn(jax.tree.map(jnp.copy, params))
    timing, metrics = time_step(step_fn, state, batches, bench.warmup, bench.steps)
    flops = step_flops(model, bench)
    matmul = best_matmul(model, bench)
    floor = matmul_floor(model, bench)
    attention = attention_floor(model, bench)
    median_s = timing["wall"]["median_s"]
    result.update(
        timing=timing, metrics=metrics, flops=flops, matmul=matmul, matmul_floor=floor,
        attention_floor=attention,
        step_over_matmul_floor=median_s / floor["min_s"],
        tokens_per_s=flops["tokens"] / median_s,
        tokens_per_s_best=flops["tokens"] / timing["wall"]["min_s"],
        achieved_gflops=flops["train_step"] / median_s / 1e9,
        achieved_gflops_best=flops["train_step"] / timing["wall"]["min_s"] / 1e9)
    result["matmul_over_step_gflops"] = matmul["gflops_best"] / result["achieved_gflops_best"]
    if bench.piece_rounds:
      result["pieces"] = step_pieces.breakdown(params, batches[0], model, optim, bench)
  result["load_average_after"] = list(os.getloadavg())
  return result


def table(result: dict) -> str:
  """A short human-readable summary of `run`'s result."""
  t, m = result["timing"], result["matmul"]
  lines = [
      f"{result['preset']}: {result['step']}_step, {result['param_count']:,} params, "
      f"batch {result['bench']['batch_size']} x {result['bench']['seq_len']}, "
      f"{result['backend']}, load {result['load_average'][0]:.1f}",
      f"  step wall median {t['wall']['median_s'] * 1e3:.1f} ms (min {t['wall']['min_s'] * 1e3:.1f},"
      f" max {t['wall']['max_s'] * 1e3:.1f}); cpu median {t['cpu']['median_s'] * 1e3:.1f} ms;"
      f" compile+first {t['compile_and_first_s']:.1f} s",
      f"  {result['tokens_per_s']:,.0f} tokens/s (best {result['tokens_per_s_best']:,.0f});"
      f" {result['achieved_gflops']:.1f} GFLOP/s (best {result['achieved_gflops_best']:.1f})"
      f" of {result['flops']['train_step'] / 1e9:.2f} GFLOP counted",
      f"  best matmul [{m['shape']['m']},{m['shape']['d']}]x[{m['shape']['d']},{m['shape']['f']}]:"
      f" {m['gflops_best']:.1f} GFLOP/s = {result['matmul_over_step_gflops']:.2f}x the step's",
      f"  the step's weight matmuls alone ({result['matmul_floor']['dots']} dots):"
      f" {result['matmul_floor']['min_s'] * 1e3:.1f} ms at"
      f" {result['matmul_floor']['gflops_best']:.1f} GFLOP/s; step / that ="
      f" {result['step_over_matmul_floor']:.2f}",
      f"  one layer's dense attention core alone: six dots"
      f" {result['attention_floor']['dots_min_s'] * 1e3:.2f} ms"
      f" ({result['attention_floor']['dots_gflops_best']:.1f} GFLOP/s), softmax fwd+bwd"
      f" {result['attention_floor']['softmax_min_s'] * 1e3:.2f} ms",
  ]
  if "pieces" in result:
    lines.append(step_pieces.table(result["pieces"]))
  return "\n".join(lines)
