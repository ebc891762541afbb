"""Context-parallel attention benchmark: all-gathered K/V vs a ring of K/V blocks, side by side.

For each method and sequence-shard count, on a mesh of `sequence=n` (fake CPU devices are
enough: nothing is allocated for the memory figures):
  - per-device AOT temp bytes of one GDA signal-attention call forward + backward at Motif's
    shapes (8 KV heads of h=128 serving 4 query heads each, dual-V width 256, bf16) and S
    tokens per row, the collective ops its compiled HLO holds, and the bytes each rank receives
    (`received_bytes`, a traffic model: the ring's permutes sit in a loop, so the HLO text alone
    does not give executed bytes; XLA:CPU also widens bf16 permutes to float32);
  - the wall time of forward + backward at a small float32 shape (median of repeats), which on
    CPU measures the compute and bookkeeping of each method, not an interconnect.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp

from motif_jax import sharding as shd
from motif_jax.kernel_bench import median_seconds
from motif_jax.parallel import context
from pallas_kernels.flash_attention import BlockSizes

METHODS = tuple(context.METHODS)
SHAPES = dict(kv_heads=8, group=4, head_dim=128, value_dim=256, seq=(32_768, 65_536),
              shards=(4, 8), dtype="bfloat16")
SMALL = dict(kv_heads=2, group=4, head_dim=32, value_dim=64, seq=4096, shards=8, dtype="float32")

_COLLECTIVE_OPS = ("all-gather", "reduce-scatter", "collective-permute", "all-reduce")


def collective_ops(hlo_text: str) -> dict[str, int]:
  """How many collective ops of each kind the compiled HLO holds (ops inside loops count once)."""
  return {op: len(re.findall(rf"\s{op}(?:-start)?\(", hlo_text)) for op in _COLLECTIVE_OPS
          if re.search(rf"\s{op}(?:-start)?\(", hlo_text)}


def received_bytes(method: str, *, shards: int, seq: int, kv_heads: int, head_dim: int,
                   value_dim: int, dtype: str, **_) -> dict[str, int]:
  """Bytes each rank receives for one attention call, forward and backward (traffic model).

  allgather: the forward gathers (n-1)/n of K, V and segment ids; the backward gathers them
  again (recompute, as compiled) and reduce-scatters dK, dV in the input dtype.
  ring: n-1 hops of one S/n block of K, V and segment ids per pass; the backward's float32
  dK, dV travel with their block and take one more hop home.
  """
  n, item = shards, jnp.dtype(dtype).itemsize
  kv_token = kv_heads * (head_dim + value_dim) * item + 4  # K, V and a segment id
  dkv_token = kv_heads * (head_dim + value_dim)
  if method == "allgather":
    gather = (n - 1) * seq // n * kv_token
    return {"forward": gather, "backward": gather + (n - 1) * seq // n * dkv_token * item}
  hops = (n - 1) * (seq // n) * kv_token
  return {"forward": hops, "backward": hops + n * (seq // n) * dkv_token * 4}


def _specs(batch, seq, kv_heads, group, head_dim, value_dim, dtype):
  sds = jax.ShapeDtypeStruct
  return (sds((batch, seq, kv_heads, group, head_dim), dtype),
          sds((batch, seq, kv_heads, head_dim), dtype),
          sds((batch, seq, kv_heads, value_dim), dtype), sds((batch, seq), jnp.int32))


def attention_grad_fn(method: str, rules: shd.ShardingRules,
                      block_sizes: BlockSizes = BlockSizes()) -> Callable:
  """(q, k, v, seg) in zig-zag order -> dq, dk, dv of sum(o): one forward + backward."""
  def loss(q, k, v, seg):
    o = context.context_attend(q, k, v, seg, rules=rules, method=method, block_sizes=block_sizes)
    return jnp.sum(o.astype(jnp.float32))
  return jax.grad(loss, argnums=(0, 1, 2))


def _shardings(mesh, rules, specs):
  names = (("batch", "seq", "kv_heads", None, None), ("batch", "seq", "kv_heads", None),
           ("batch", "seq", "kv_heads", None), ("batch", "seq"))
  return tuple(jax.sharding.NamedSharding(mesh, shd.activation_spec(n, rules, mesh))
               for n in names)


def compiled_figures(method: str, *, shards: int, seq: int, **shape) -> dict:
  """AOT temp bytes and collective bytes per device at `seq` tokens over `shards` ranks."""
  rules = shd.ShardingRules()
  mesh = shd.make_mesh(dict(sequence=shards))
  specs = _specs(1, seq, **shape)
  with jax.set_mesh(mesh):
    fn = jax.jit(attention_grad_fn(method, rules),
                 in_shardings=_shardings(mesh, rules, specs))
    compiled = fn.lower(*specs).compile()
  return {"temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes),
          "collective_ops": collective_ops(compiled.as_text()),
          "received_bytes": received_bytes(method, shards=shards, seq=seq, **shape)}


def seconds(method: str, *, shards: int, seq: int, repeats: int, **shape) -> float:
  rules = shd.ShardingRules()
  mesh = shd.make_mesh(dict(sequence=shards))
  specs = _specs(1, seq, **shape)
  keys = jax.random.split(jax.random.key(0), 3)
  args = [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, specs[:3])]
  args.append(jnp.repeat(jnp.arange(1, 5, dtype=jnp.int32), seq // 4)[None])  # 4 segments
  with jax.set_mesh(mesh):
    shardings = _shardings(mesh, rules, specs)
    args = tuple(jax.device_put(a, s) for a, s in zip(args, shardings))
    block_sizes = BlockSizes(xla_block_q=256, xla_block_k=256)
    return median_seconds(jax.jit(attention_grad_fn(method, rules, block_sizes)), args, repeats)


def bench(methods: tuple[str, ...] = METHODS, repeats: int = 3, log: Callable = print) -> dict:
  shape = {k: SHAPES[k] for k in ("kv_heads", "group", "head_dim", "value_dim", "dtype")}
  results = {}
  for method in methods:
    row = {}
    for shards in SHAPES["shards"]:
      for seq in SHAPES["seq"]:
        figures = compiled_figures(method, shards=shards, seq=seq, **shape)
        row[f"S{seq}_n{shards}"] = figures
        moved = sum(figures["received_bytes"].values())
        log(f"{method:<10} sequence={shards} S={seq:<6} temp {figures['temp_bytes'] / 2**30:7.3f} "
            f"GiB  received {moved / 2**20:7.1f} MiB/rank  {figures['collective_ops']}")
    small = {k: v for k, v in SMALL.items() if k not in ("seq", "shards")}
    row["seconds_small"] = seconds(method, shards=SMALL["shards"], seq=SMALL["seq"],
                                   repeats=repeats, **small)
    log(f"{method:<10} small shape fwd+bwd {row['seconds_small']:.3f} s")
    results[method] = row
  return results
