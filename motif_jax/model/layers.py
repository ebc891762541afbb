"""Small building blocks: RMSNorm, rotate-half RoPE, PolyNorm, and the two gated MLPs.

Dimension letters (see `transformer.py`): b batch, t query seq, s key seq, d model width,
n query heads, k kv heads, h head dim, f ffw width, v vocab, l layers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from motif_jax import sharding as shd
from motif_jax.model.config import ModelConfig


def rms_norm(x: jax.Array, weight: jax.Array | None, eps: float) -> jax.Array:
  """RMS normalization over the last axis, computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  if weight is not None:
    y = y * jnp.expand_dims(weight.astype(jnp.float32), range(y.ndim - 1))
  return y.astype(x.dtype)


def rope_tables(positions_bt: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos/sin tables [b, t, h] for rotate-half RoPE (NeoX / HF Llama layout), float32."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_bth2 = positions_bt.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
  angles_bth = jnp.concatenate([angles_bth2, angles_bth2], axis=-1)
  return jnp.cos(angles_bth), jnp.sin(angles_bth)


def apply_rope(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
  x32 = x_btnh.astype(jnp.float32)
  half = x32.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  out = x32 * cos_bth[:, :, None, :] + rotated * sin_bth[:, :, None, :]
  return out.astype(x_btnh.dtype)


def polynorm(x_btf: jax.Array, w_3: jax.Array, b_1: jax.Array, eps: float) -> jax.Array:
  """w0·N(x³) + w1·N(x²) + w2·N(x) + b, N = RMS over the ffw axis without gain, in float32.

  Under tensor parallelism the ffw axis is sharded; the means below are over the full axis and
  GSPMD inserts the all-reduce (recipe §1.4).
  """
  x32 = x_btf.astype(jnp.float32)

  def norm(z):
    return z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + eps)

  w32 = w_3.astype(jnp.float32)
  y = w32[0] * norm(x32 ** 3) + w32[1] * norm(x32 ** 2) + w32[2] * norm(x32) + b_1.astype(
      jnp.float32)[0]  # scalar coefficients broadcast without rank promotion
  return y.astype(x_btf.dtype)


def dense(x_bt_in: jax.Array, w_in_out: jax.Array, contract: int = 1) -> jax.Array:
  """x's last `contract` dims times w's first `contract` dims (`jnp.tensordot`).

  On one device the backward runs as 2-D [b*t, in] x [in, out] dots (`_dense_2d_grads`): XLA CPU
  lowers the autodiff weight gradient of a `btd,df->btf` contraction (two contracting dims, b
  and t) through transposed copies of the activations, and a SwiGLU MLP's forward + backward
  took 2.2x the 2-D form's time. The forward keeps the [b, t, ...] contraction, so remat
  policies and checkpoint names see the same activations. Under a mesh plain autodiff stays:
  merging (b, t) hides their shardings from GSPMD, which then gathered tensor-sharded weights
  whole.
  """
  if shd.single_device():
    return _dense_2d_grads(x_bt_in, w_in_out, contract)
  return jnp.tensordot(x_bt_in, w_in_out, axes=contract)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_2d_grads(x_bt_in: jax.Array, w_in_out: jax.Array, contract: int) -> jax.Array:
  return jnp.tensordot(x_bt_in, w_in_out, axes=contract)


def _dense_fwd(x_bt_in, w_in_out, contract):
  # The tensordot itself, not a call of `_dense_2d_grads`: remat's `dots` policy must see the
  # dot_general (tests/test_wiring.py).
  return jnp.tensordot(x_bt_in, w_in_out, axes=contract), (x_bt_in, w_in_out)


def _dense_bwd(contract, residuals, dy_bt_out):
  x_bt_in, w_in_out = residuals
  size_in = math.prod(w_in_out.shape[:contract])
  x_ti = x_bt_in.reshape(-1, size_in)
  w_io = w_in_out.reshape(size_in, -1)
  dy_to = dy_bt_out.reshape(x_ti.shape[0], -1).astype(x_ti.dtype)
  dx = jnp.dot(dy_to, w_io.T).reshape(x_bt_in.shape)
  dw = jnp.dot(x_ti.T, dy_to).reshape(w_in_out.shape)
  return dx.astype(x_bt_in.dtype), dw.astype(w_in_out.dtype)


_dense_2d_grads.defvjp(_dense_fwd, _dense_bwd)


def mlp(x_btd: jax.Array, p: dict, cfg: ModelConfig) -> jax.Array:
  """Gated MLP: down(act(gate(x)) * up(x)), act = SiLU (swiglu) or PolyNorm (polynorm)."""
  dtype = jnp.dtype(cfg.dtype)
  if "w_gate_up" in p:  # decode.decode_params' [d, 2, f] stack: one dot for both projections
    gate_up_bt2f = dense(x_btd, p["w_gate_up"].astype(dtype))
    gate_btf, up_btf = gate_up_bt2f[..., 0, :], gate_up_bt2f[..., 1, :]
  else:
    gate_btf = dense(x_btd, p["w_gate"].astype(dtype))
    up_btf = dense(x_btd, p["w_up"].astype(dtype))
  if cfg.mlp == "polynorm":
    act_btf = polynorm(gate_btf, p["poly_w"], p["poly_b"], cfg.polynorm_eps)
  else:
    act_btf = jax.nn.silu(gate_btf)
  hidden_btf = shd.constrain(act_btf * up_btf, ("batch", "seq", "ffw"), cfg.sharding)
  hidden_btf = checkpoint_name(hidden_btf, "mlp_hidden")
  return dense(hidden_btf, p["w_down"].astype(dtype))
