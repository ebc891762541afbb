"""Sampler benchmark: generated tokens/s of `motif_jax.sampling.sample`, cold and warm.

(a) The tiny Llama that `../shared/peers/` runs beside Tunix's sampler: vocab 512, d 256, 4
    layers, 4 query / 2 KV heads of 64, SwiGLU 1024, float32, untied; 8 prompts of 32 tokens,
    128 new tokens, greedy, no stop ids, one CPU device. Cold = the first call (trace, compile,
    run); warm = median of the later calls. `--drafts` adds n-gram speculative decoding
    (`draft_tokens` = k) side by side, alternated. Beside it, in the same rounds, two floors: the
    weights floor, a jitted while_loop that only multiplies a batch of 8 through the same weights
    128 times (no attention, no cache), i.e. what reading the weights once per token costs on
    this machine; and the attention floor, the same loop through the layers' decode attention
    cores only (the sampler's own gqa core over its KV cache, no weights). Their sum is the
    parts floor: what one token per step costs before norms, RoPE, cache writes and sampling.
(b) RL-shaped, the tiny Motif model (configs/tiny.py): 16 prompts of 64-128 tokens x 8 samples,
    256 new tokens, temperature 1, no stop ids. `shared`: num_samples=8 (each prompt prefilled
    once, its cache rows repeated); `repeated`: every prompt listed 8 times with num_samples=1
    (prefilled 8 times). Same rows, same work otherwise. `one_window`: shared, with the KV cache
    at all its slots from the first step (`window_slots=0`) instead of growing in windows.

Sides are alternated round by round; figures are min / median / max over rounds. Wall time on a
shared machine is noisy, so process CPU time is reported too, and the load average.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from configs import common, tiny
from motif_jax import sampling
from motif_jax.model import ModelConfig, init_params
from motif_jax.model import attention as attn
from motif_jax.model import decode

LLAMA = dict(vocab_size=512, d_model=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
             d_ff=1024, attention="gqa", mlp="swiglu", rms_norm_eps=1e-5, max_seq_len=256,
             dtype="float32", tie_embeddings=False)
SHAPE_A = dict(batch=8, prompt_len=32, max_new_tokens=128)
SHAPE_B = dict(prompts=16, samples=8, prompt_len=(64, 128), max_new_tokens=256, temperature=1.0)


def load() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def _timed(fn: Callable) -> tuple[object, float, float]:
  wall, cpu = time.perf_counter(), time.process_time()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - wall, time.process_time() - cpu


def _stats(xs: list[float]) -> dict:
  return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "all": xs}


def weights_floor(params: dict, cfg: ModelConfig, batch: int, steps: int) -> Callable:
  """A jitted loop of `steps` tokens through the layer matmuls only (the sampler's per-layer
  weights, `decode.decode_params`: the MLP's gate and up stacked into one [d, 2, f] matrix)."""
  layers = decode.decode_params(params, cfg)["layers"]

  @jax.jit
  def loop(layers, embed, unembed):
    def body(carry):
      i, tok_b = carry
      x_bd = embed[tok_b]
      for p in layers:
        a, m = p["attn"], p["mlp"]
        q_bnh = jnp.einsum("bd,dnh->bnh", x_bd, a["wq"])
        kv_bkh = jnp.einsum("bd,dkh->bkh", x_bd, a["wk"]) + jnp.einsum("bd,dkh->bkh", x_bd,
                                                                          a["wv"])
        o_bnh = q_bnh + jnp.tile(kv_bkh, (1, q_bnh.shape[1] // kv_bkh.shape[1], 1))
        x_bd = x_bd + jnp.einsum("bnh,nhd->bd", o_bnh, a["wo"])
        gate_up_b2f = jnp.einsum("bd,dsf->bsf", x_bd, m["w_gate_up"])
        x_bd = x_bd + jnp.einsum("bf,fd->bd", jax.nn.silu(gate_up_b2f[:, 0]) * gate_up_b2f[:, 1],
                                 m["w_down"])
      return i + 1, jnp.argmax(x_bd @ unembed, axis=-1).astype(jnp.int32)
    return jax.lax.while_loop(lambda c: c[0] < steps, body,
                              (0, jnp.zeros((batch,), jnp.int32)))[1]

  return lambda: loop(layers, params["embed"], params["unembed"])


def attention_floor_inputs(cfg: ModelConfig, batch: int, slots: int
                           ) -> tuple[list[jax.Array], list[jax.Array], jax.Array]:
  """Random per-layer K [b, k, h, S] and V [b, k, S, h] caches and a first query [b, 1, n, h]."""
  keys = jax.random.split(jax.random.key(3), 2 * cfg.num_layers + 1)
  cache = decode.init_cache(cfg, batch, slots)
  ks = [jax.random.normal(keys[i], c.shape, c.dtype) for i, c in enumerate(cache["k"])]
  vs = [jax.random.normal(keys[cfg.num_layers + i], c.shape, c.dtype)
        for i, c in enumerate(cache["v"])]
  return ks, vs, jax.random.normal(keys[-1], (batch, 1, cfg.num_heads, cfg.head_dim), cfg.dtype)


def attention_floor(cfg: ModelConfig, batch: int, prompt_len: int, steps: int
                    ) -> tuple[Callable, int]:
  """A jitted loop of `steps` one-token decode steps through every layer's attention core alone:
  (the loop, cache slots it reads).

  The core is the sampler's (`attention._decode_gqa`: q.K over the K cache `[b, k, h, S]`, the
  masked float32 softmax, p.V over `[b, k, S, h]`), on a cache of the slots `sampling.sample`
  allocates for this shape, with step i's rows valid up to slot prompt_len + i. Each layer's output
  is the next layer's query, so nothing is hoisted or skipped; no projections, no cache writes.
  """
  if cfg.attention != "gqa":
    raise ValueError(f"attention_floor times the gqa decode core, not {cfg.attention!r}")
  slots = sampling.make_plan(batch, 1, prompt_len, max_new_tokens=steps).cache_len
  ks, vs, q0_b1nh = attention_floor_inputs(cfg, batch, slots)

  @jax.jit
  def loop(ks, vs, q0_b1nh):
    def body(carry):
      i, q_b1nh = carry
      valid_b1s = (jnp.arange(slots) <= prompt_len + i)[None, None, :]
      for k_cache, v_cache in zip(ks, vs):
        q_b1nh = attn._decode_gqa(q_b1nh, k_cache, v_cache, valid_b1s)  # noqa: SLF001
      return i + 1, q_b1nh
    return jax.lax.while_loop(lambda c: c[0] < steps, body, (0, q0_b1nh))[1]

  return (lambda: loop(ks, vs, q0_b1nh)), slots


def bench_llama(rounds: int, warm_calls: int, drafts: tuple[int, ...] = (0,)) -> dict:
  """Shape (a): cold and warm generated tokens/s for each `draft_tokens` in `drafts` (0 = one
  token per step; k > 0 = n-gram speculative decoding), and the weights-only floor, alternated
  round by round. The top level holds the first entry of `drafts`; `by_drafts` all of them."""
  cfg = ModelConfig.from_config_dict(common.model(**LLAMA))
  params = init_params(jax.random.key(0), cfg)
  rng = np.random.default_rng(1)
  prompts = rng.integers(2, cfg.vocab_size, (SHAPE_A["batch"], SHAPE_A["prompt_len"])).tolist()

  def runner(k):
    return lambda: sampling.sample(params, prompts, cfg, max_new_tokens=SHAPE_A["max_new_tokens"],
                                   temperature=0.0, key=jax.random.key(0), draft_tokens=k)

  sides = {}
  for k in drafts:
    rollouts, cold_wall, cold_cpu = _timed(runner(k))
    generated = int(rollouts.lengths.sum())
    sides[k] = {"draft_tokens": k, "generated_tokens": generated,
                "decode_steps": rollouts.decode_steps, "accepted_drafts": rollouts.accepted_drafts,
                "cold_s": cold_wall, "cold_cpu_s": cold_cpu,
                "cold_tokens_per_s": generated / cold_wall,
                "walls": [], "cpus": []}
  floor = weights_floor(params, cfg, SHAPE_A["batch"], SHAPE_A["max_new_tokens"])
  floor()
  att_floor, slots = attention_floor(cfg, SHAPE_A["batch"], SHAPE_A["prompt_len"],
                                     SHAPE_A["max_new_tokens"])
  att_floor()
  floor_walls, att_walls = [], []
  for _ in range(rounds):
    for k in drafts:
      for _ in range(warm_calls):
        _, wall, cpu = _timed(runner(k))
        sides[k]["walls"].append(wall)
        sides[k]["cpus"].append(cpu)
    floor_walls.append(_timed(floor)[1])
    att_walls.append(_timed(att_floor)[1])
  for side in sides.values():
    walls, cpus = side.pop("walls"), side.pop("cpus")
    side.update(warm_s=_stats(walls), warm_cpu_s=_stats(cpus),
                warm_tokens_per_s=side["generated_tokens"] / statistics.median(walls))
  floor_s, att_s = _stats(floor_walls), _stats(att_walls)
  parts_s = _stats([w + a for w, a in zip(floor_walls, att_walls)])
  generated = sides[drafts[0]]["generated_tokens"]
  return {"model": LLAMA, **SHAPE_A, **sides[drafts[0]],
          "by_drafts": {str(k): side for k, side in sides.items()},
          "weights_floor_s": floor_s,
          "weights_floor_tokens_per_s": generated / floor_s["median"],
          "attention_floor_s": att_s, "attention_floor_cache_slots": slots,
          "parts_floor_s": parts_s,
          "parts_floor_tokens_per_s": generated / parts_s["median"]}


def bench_rl_shape(rounds: int) -> dict:
  """Shape (b): shared prefill vs the prompt repeated per sample, alternated."""
  cfg = ModelConfig.from_config_dict(tiny.get_config().model)
  params = init_params(jax.random.key(0), cfg)
  rng = np.random.default_rng(2)
  lo, hi = SHAPE_B["prompt_len"]
  n = SHAPE_B["samples"]
  prompts = [rng.integers(2, cfg.vocab_size, int(rng.integers(lo, hi + 1))).tolist()
             for _ in range(SHAPE_B["prompts"])]
  kw = dict(max_new_tokens=SHAPE_B["max_new_tokens"], temperature=SHAPE_B["temperature"],
            key=jax.random.key(0))
  sides = {
      "shared": lambda: sampling.sample(params, prompts, cfg, num_samples=n, **kw),
      "repeated": lambda: sampling.sample(params, [p for p in prompts for _ in range(n)], cfg,
                                          num_samples=1, **kw),
      # Shared prefill on one cache window of all 384 slots from the first step (the default
      # grows the cache in windows on CPU: sampling_plan.default_window_slots).
      "one_window": lambda: sampling.sample(params, prompts, cfg, num_samples=n, window_slots=0,
                                            **kw),
  }
  result = {"model": "configs/tiny.py", **SHAPE_B}
  for name, fn in sides.items():
    rollouts, wall, cpu = _timed(fn)
    result[name] = {"cold_s": wall, "cold_cpu_s": cpu, "walls": [], "cpus": []}
    result["generated_tokens"] = int(rollouts.lengths.sum())
  for _ in range(rounds):
    for name, fn in sides.items():
      _, wall, cpu = _timed(fn)
      result[name]["walls"].append(wall)
      result[name]["cpus"].append(cpu)
  for name in sides:
    side = result[name]
    side["warm_s"], side["warm_cpu_s"] = _stats(side.pop("walls")), _stats(side.pop("cpus"))
    side["warm_tokens_per_s"] = result["generated_tokens"] / side["warm_s"]["median"]
  for name in ("repeated", "one_window"):
    result[f"{name}_over_shared_wall"] = [r / s for r, s in zip(
        result[name]["warm_s"]["all"], result["shared"]["warm_s"]["all"])]
  longest = max(len(p) for p in prompts)
  result["windows"] = list(sampling.make_plan(SHAPE_B["prompts"], n, longest,
                                              max_new_tokens=SHAPE_B["max_new_tokens"]).windows)
  return result


def table(result: dict) -> str:
  lines = [f"load average before/after: {result['load_before']} / {result['load_after']}"]
  if "llama" in result:
    a = result["llama"]
    lines += [
        f"(a) tiny Llama, {a['batch']} x {a['prompt_len']} + {a['max_new_tokens']} greedy, "
        f"{a['decode_steps']} decode steps",
        f"    cold {a['cold_s']:.2f} s ({a['cold_tokens_per_s']:.0f} tok/s); warm median "
        f"{a['warm_s']['median']:.3f} s (min {a['warm_s']['min']:.3f}): "
        f"{a['warm_tokens_per_s']:.0f} generated tok/s",
        f"    weights-only floor {a['weights_floor_s']['median']:.3f} s: "
        f"{a['weights_floor_tokens_per_s']:.0f} tok/s",
        f"    attention floor ({a['attention_floor_cache_slots']} cache slots) "
        f"{a['attention_floor_s']['median']:.3f} s; parts floor (weights + attention) "
        f"{a['parts_floor_s']['median']:.3f} s: {a['parts_floor_tokens_per_s']:.0f} tok/s"]
    for k, side in a.get("by_drafts", {}).items():
      lines.append(f"    draft_tokens={k}: warm median {side['warm_s']['median']:.3f} s, "
                   f"{side['warm_tokens_per_s']:.0f} tok/s, {side['decode_steps']} decode steps, "
                   f"{side['accepted_drafts']} drafts accepted")
  if "rl" in result:
    b = result["rl"]
    lines.append(f"(b) tiny Motif, {b['prompts']} prompts x {b['samples']} samples, "
                 f"{b['max_new_tokens']} new tokens, T={b['temperature']}")
    for name in ("shared", "repeated", "one_window"):
      s = b[name]
      lines.append(f"    {name:10s} warm median {s['warm_s']['median']:.2f} s "
                   f"(min {s['warm_s']['min']:.2f}, max {s['warm_s']['max']:.2f}): "
                   f"{s['warm_tokens_per_s']:.0f} tok/s; cold {s['cold_s']:.2f} s")
    for name in ("repeated", "one_window"):
      ratios = b[f"{name}_over_shared_wall"]
      lines.append(f"    {name} / shared time per round: min {min(ratios):.2f}, median "
                   f"{statistics.median(ratios):.2f}, max {max(ratios):.2f}")
    lines.append(f"    shared: cache windows {b['windows']}")
  return "\n".join(lines)
