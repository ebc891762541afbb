"""RL-step benchmark: the jitted `rl_step` against `sft_step` on the same packed tokens.

Both steps are jitted as their trainers jit them (a one-device mesh, state shardings from
`trainer.abstract_train_state`, the state donated) and run on the same rows: random trajectories
(prompt + completion, several per row) packed by `rl.packing.pack_trajectories`; the SFT batch is
the same tokens, targets, segments, positions and completion-only loss mask. Rounds alternate
which side runs first; each round times `steps` warm steps of each side (per-step median), and
the result is the min / median / max over rounds of each side and of their ratio. The π_old
recompute the trainer runs once per rollout batch (rl.old_policy=recompute,
`step.jit_old_logprobs`, a forward pass) is timed beside them. Measuring code, not library code.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from motif_jax import sharding as shd
from motif_jax import trainer, typed_config
from motif_jax.bench.step import BenchConfig, build_sft_step
from motif_jax.data import pipeline
from motif_jax.model import ModelConfig, count_params, init_params
from motif_jax.optim import OptimConfig, make_optimizer
from motif_jax.rl.config import RLConfig
from motif_jax.rl.packing import pack_trajectories
from motif_jax.rl.replay import Trajectory
from motif_jax.rl.step import RLStepConfig, jit_old_logprobs, jit_rl_step
from motif_jax.sft import BATCH_KEYS
from motif_jax.train_state import init_train_state


def random_rl_batch(model: ModelConfig, rows: int, seq_len: int, *, prompt_len: int,
                    domains: int, seed: int) -> dict[str, np.ndarray]:
  """Every row filled to the last position with random trajectories (prompt_len prompt tokens,
  completions of prompt_len..4 prompt_len tokens, the row's last one cut to fit), advantages of
  both signs, behaviour log-probs near -2."""
  if not 1 <= prompt_len < seq_len:
    raise ValueError(f"prompt_len={prompt_len} must be in [1, bench.seq_len={seq_len})")
  rng = np.random.default_rng(seed)
  trajectories = []
  for _ in range(rows):
    room = seq_len
    while room >= prompt_len:  # a trajectory takes prompt_len + c - 1 positions, c >= 1
      c = min(int(rng.integers(prompt_len, 4 * prompt_len + 1)), room - prompt_len + 1)
      room -= prompt_len + c - 1
      trajectories.append(Trajectory(
          prompt_tokens=rng.integers(1, model.vocab_size, prompt_len, dtype=np.int32),
          completion_tokens=rng.integers(1, model.vocab_size, c, dtype=np.int32),
          behaviour_logprobs=(-2.0 + 0.3 * rng.standard_normal(c)).astype(np.float32),
          reward=float(rng.integers(0, 2)), advantage=float(rng.choice([-1.0, 1.0])),
          passed=bool(rng.integers(0, 2)), truncated=False, prompt_id=len(trajectories),
          domain=len(trajectories) % domains, version=0))
  return pack_trajectories(trajectories, rows=rows, seq_len=seq_len)


def _timed(fn, state, batch, steps: int) -> tuple[float, float, object]:
  """Per-step wall and process-CPU seconds (medians of `steps` calls), and the last state.
  CPU seconds are the steadier figure on a machine shared with other jobs."""
  wall, cpu = [], []
  for _ in range(steps):
    t0, c0 = time.perf_counter(), time.process_time()
    state, metrics = fn(state, batch)
    jax.block_until_ready((state, metrics))
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return statistics.median(wall), statistics.median(cpu), state


def _summary(values: list[float]) -> dict:
  return {"min": min(values), "median": statistics.median(values), "max": max(values),
          "all": values}


def run(config, rl: RLConfig, *, rounds: int, prompt_len: int) -> dict:
  """Alternating rounds of sft_step and rl_step (and the π_old forward) on one packed batch."""
  model = ModelConfig.from_config_dict(config.model)
  optim = OptimConfig.from_config_dict(config.optim)
  bench = typed_config.build(BenchConfig, config.bench, "bench")
  if rounds < 1:
    raise ValueError(f"rounds={rounds} must be >= 1")
  mesh = shd.make_mesh(shd.parse_mesh(""))
  rows, seq_len = bench.batch_size, bench.seq_len
  host = random_rl_batch(model, rows, seq_len, prompt_len=prompt_len,
                         domains=len(rl.domain_names), seed=bench.seed)
  if rl.kl_coef:
    host["ref_logprobs"] = host["behaviour_logprobs"] - 0.1
  result = {
      "preset": bench.name, "bench": dataclasses.asdict(bench), "rounds": rounds,
      "rl": dataclasses.asdict(rl), "prompt_len": prompt_len,
      "tokens": rows * seq_len, "loss_tokens": int(host["loss_mask"].sum()),
      "trajectories": int(sum(len(np.unique(s[s > 0])) for s in host["sequence_ids"])),
      "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "backend": jax.default_backend(), "jax": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "load_average": list(os.getloadavg())}
  with jax.set_mesh(mesh):
    params = init_params(jax.random.key(bench.seed), model, mesh)
    result["param_count"] = count_params(params)
    sharding = NamedSharding(mesh, shd.spec_for(("batch", None), model.sharding))
    rl_batch = pipeline.make_global_batch(host, sharding)
    sft_batch = {k: rl_batch[k] for k in BATCH_KEYS}
    sft_init, sft_fn = build_sft_step(model, optim, bench, mesh)
    optimizer, schedule = make_optimizer(optim)
    _, state_shardings = trainer.abstract_train_state(model, optimizer, bench.seed, mesh)
    cfg = RLStepConfig(model, rl, bench.num_microbatches, bench.loss_impl)
    rl_fn = jit_rl_step(cfg, optimizer, schedule, state_shardings, sharding)
    old_fn = jit_old_logprobs(cfg, state_shardings.params, sharding)
    rl_init = jax.jit(functools.partial(init_train_state, optimizer=optimizer, seed=bench.seed),
                      out_shardings=state_shardings)
    # π_old as the trainer recomputes it (rl.old_policy=recompute): ratios start at 1.
    rl_batch["old_logprobs"] = old_fn(params, rl_batch)
    states = {"sft": sft_init(jax.tree.map(jnp.copy, params)),
              "rl": rl_init(jax.tree.map(jnp.copy, params))}
    fns = {"sft": sft_fn, "rl": rl_fn,
           "old_logprobs": lambda state, batch: (state, old_fn(state.params, batch))}
    batches = {"sft": sft_batch, "rl": rl_batch, "old_logprobs": rl_batch}
    compile_s = {}
    for side in ("sft", "rl", "old_logprobs"):  # compile and warm up
      state = states["rl" if side == "old_logprobs" else side]
      t0 = time.perf_counter()
      _, _, state = _timed(fns[side], state, batches[side], 1 + bench.warmup)
      compile_s[side] = time.perf_counter() - t0
      states["rl" if side == "old_logprobs" else side] = state
    per_round = {side: [] for side in fns}
    cpu_round = {side: [] for side in fns}
    for r in range(rounds):
      order = ("sft", "rl", "old_logprobs") if r % 2 == 0 else ("old_logprobs", "rl", "sft")
      for side in order:
        key = "rl" if side == "old_logprobs" else side
        wall, cpu, states[key] = _timed(fns[side], states[key], batches[side], bench.steps)
        per_round[side].append(wall)
        cpu_round[side].append(cpu)
    _, metrics = rl_fn(states["rl"], rl_batch)

  def ratios(times):
    return {"rl_over_sft": _summary([r / s for r, s in zip(times["rl"], times["sft"])]),
            "rl_with_old_logprobs_over_sft": _summary(
                [(r + o) / s for r, o, s in zip(times["rl"], times["old_logprobs"],
                                                times["sft"])])}
  result.update(
      compile_and_warmup_s=compile_s,
      step_s={side: _summary(v) for side, v in per_round.items()},
      cpu_s={side: _summary(v) for side, v in cpu_round.items()},
      **ratios(per_round), cpu=ratios(cpu_round),
      tokens_per_s={side: result["tokens"] / statistics.median(v)
                    for side, v in per_round.items()},
      rl_metrics={k: float(v) for k, v in jax.device_get(metrics).items()
                  if k in ("loss/rl", "train/tokens", "train/sequences", "ratio/mean")},
      load_average_after=list(os.getloadavg()))
  return result


def table(result: dict) -> str:
  """A short human-readable summary of `run`'s result."""
  b = result["bench"]
  lines = [f"{result['preset']}: {result['param_count']:,} params, {b['batch_size']} x "
           f"{b['seq_len']} tokens ({result['trajectories']} trajectories, "
           f"{result['loss_tokens']:,} completion tokens), {result['rounds']} rounds x "
           f"{b['steps']} steps, {result['backend']}, load {result['load_average'][0]:.1f}",
           f"  {'per step':<24}{'min ms':>10}{'median ms':>11}{'max ms':>10}"]
  for side, name in (("sft", "sft_step"), ("rl", "rl_step"),
                     ("old_logprobs", "pi_old forward")):
    s = result["step_s"][side]
    lines.append(f"  {name:<24}{s['min'] * 1e3:>10.1f}{s['median'] * 1e3:>11.1f}"
                 f"{s['max'] * 1e3:>10.1f}")
  for key, name in (("rl_over_sft", "rl / sft"),
                    ("rl_with_old_logprobs_over_sft", "(rl + pi_old) / sft")):
    for clock, source in (("wall", result), ("cpu", result["cpu"])):
      s = source[key]
      lines.append(f"  {name + ' ' + clock:<24}{s['min']:>10.3f}{s['median']:>11.3f}"
                   f"{s['max']:>10.3f}")
  return "\n".join(lines)
