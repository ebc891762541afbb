"""Where a training step's time goes: its pieces jitted alone and timed round-robin.

Pieces (count per step in brackets): embedding [1], attention [L], MLP [L], RMSNorm [2L + 1],
LM head + loss [1], optimizer update [1]. Each runs forward alone and forward + backward (a VJP
with respect to its activations and weights); backward = the difference. Round-robin: each round
calls every piece once in turn, so machine load hits all pieces alike; medians over rounds. The
per-step sum (count x forward+backward, plus the update) is set beside the whole step's time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from motif_jax import losses
from motif_jax.model import ModelConfig, embed, layers
from motif_jax.model.attention import attention
from motif_jax.optim import OptimConfig, make_optimizer


def _piece(fn: Callable, diff: tuple, const: tuple) -> dict:
  """Jitted forward and forward+backward of fn(*diff, *const) (cotangent 1 on every output)."""
  def forward(d, c):
    return fn(*d, *c)

  def forward_backward(d, c):
    out, vjp = jax.vjp(lambda *x: fn(*x, *c), *d)
    return out, vjp(jax.tree.map(jnp.ones_like, out))
  return {"fwd": jax.jit(forward), "fwd_bwd": jax.jit(forward_backward), "args": (diff, const)}


def _matmul_flops(tree: dict, tokens: int) -> float:
  return float(sum(2 * np.prod(a.shape) * tokens for name, a in tree.items()
                   if name in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")))


def make_pieces(params: dict, batch: dict, model: ModelConfig, optim: OptimConfig) -> dict:
  """name -> {fwd, fwd_bwd, args, count, flops (forward, where counted)}."""
  b, t = batch["tokens"].shape
  tokens = b * t
  dtype = jnp.dtype(model.dtype)
  h_btd = jax.random.normal(jax.random.key(1), (b, t, model.d_model), dtype)
  layer0 = jax.tree.map(lambda a: a[0], params["layers"])
  cos_bth, sin_bth = layers.rope_tables(batch["positions"], model.head_dim, model.rope_theta)
  seg_bt = batch["segment_ids"]
  head_name = "embed" if model.tie_embeddings else "unembed"
  core_flops = 2 * model.num_heads * (model.head_dim + model.value_dim) * (t / 2) * tokens
  pieces = {
      "embedding": _piece(lambda table, tok: embed({"embed": table}, tok, model),
                          (params["embed"],), (batch["tokens"],)) | {"count": 1, "flops": 0.0},
      "attention": _piece(
          lambda h, p, cos, sin, seg: attention(h, p, jnp.asarray(0), cos, sin, seg, model),
          (h_btd, layer0["attn"]), (cos_bth, sin_bth, seg_bt))
      | {"count": model.num_layers, "flops": _matmul_flops(layer0["attn"], tokens) + core_flops},
      "mlp": _piece(lambda h, p: layers.mlp(h, p, model), (h_btd, layer0["mlp"]), ())
      | {"count": model.num_layers, "flops": _matmul_flops(layer0["mlp"], tokens)},
      "norm": _piece(lambda h, w: layers.rms_norm(h, w, model.rms_norm_eps),
                     (h_btd, layer0["attn_norm"]), ())
      | {"count": 2 * model.num_layers + 1, "flops": 0.0},
      "lm_head_loss": _piece(
          lambda w, h, tgt, mask: losses.next_token_loss({head_name: w}, h, tgt, mask, model),
          (params[head_name], h_btd), (batch["targets"], batch["loss_mask"]))
      | {"count": 1, "flops": 2.0 * model.d_model * model.vocab_size * tokens},
  }
  optimizer, _ = make_optimizer(optim)
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 1e-3, jnp.float32), params)
  opt_state = optimizer.init(params)

  def update(g, s, p):
    u, s = optimizer.update(g, s, p)
    return optax.apply_updates(p, u), s
  pieces["optimizer_update"] = {"fwd": jax.jit(update), "fwd_bwd": None,
                                "args": ((grads, opt_state, params), ()), "count": 1,
                                "flops": 0.0}
  return pieces


def breakdown(params: dict, batch: dict, model: ModelConfig, optim: OptimConfig, bench) -> dict:
  """Median ms per call of every piece's forward and forward+backward, and the per-step sum."""
  pieces = make_pieces(params, batch, model, optim)
  calls = []
  for name, piece in pieces.items():
    diff, const = piece["args"]
    if piece["fwd_bwd"] is None:
      calls.append((name, "fwd", lambda f=piece["fwd"], a=diff: f(*a)))
    else:
      for kind in ("fwd", "fwd_bwd"):
        calls.append((name, kind, lambda f=piece[kind], d=diff, c=const: f(d, c)))
  for _, _, call in calls:  # compile and warm
    jax.block_until_ready(call())
  seconds: dict[tuple[str, str], list[float]] = {(n, k): [] for n, k, _ in calls}
  for _ in range(bench.piece_rounds):
    for name, kind, call in calls:
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      seconds[(name, kind)].append(time.perf_counter() - t0)
  out: dict = {"rounds": bench.piece_rounds, "pieces": {}}
  total_ms = 0.0
  for name, piece in pieces.items():
    fwd_ms = statistics.median(seconds[(name, "fwd")]) * 1e3
    row = {"count": piece["count"], "fwd_ms": fwd_ms}
    if piece["fwd_bwd"] is not None:
      fb_ms = statistics.median(seconds[(name, "fwd_bwd")]) * 1e3
      row.update(fwd_bwd_ms=fb_ms, bwd_ms=fb_ms - fwd_ms)
    per_call = row.get("fwd_bwd_ms", fwd_ms)
    row["per_step_ms"] = piece["count"] * per_call
    if piece["flops"]:
      row["fwd_gflops"] = piece["flops"] / (fwd_ms / 1e3) / 1e9
      row["fwd_bwd_gflops"] = 3 * piece["flops"] / (per_call / 1e3) / 1e9
    total_ms += row["per_step_ms"]
    out["pieces"][name] = row
  out["sum_per_step_ms"] = total_ms
  return out


def table(pieces: dict) -> str:
  lines = [f"  pieces (median of {pieces['rounds']} round-robin rounds, ms per call):",
           f"    {'piece':<17}{'count':>6}{'fwd':>9}{'bwd':>9}{'fwd+bwd':>9}{'per step':>10}"
           f"{'GFLOP/s':>9}"]
  for name, row in pieces["pieces"].items():
    gf = f"{row['fwd_bwd_gflops']:.1f}" if "fwd_bwd_gflops" in row else ""
    lines.append(f"    {name:<17}{row['count']:>6}{row['fwd_ms']:>9.2f}"
                 f"{row.get('bwd_ms', float('nan')):>9.2f}{row.get('fwd_bwd_ms', row['fwd_ms']):>9.2f}"
                 f"{row['per_step_ms']:>10.1f}{gf:>9}")
  lines.append(f"    sum per step: {pieces['sum_per_step_ms']:.1f} ms")
  return "\n".join(lines)
