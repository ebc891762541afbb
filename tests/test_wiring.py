"""Remat and precision wiring of the real step: what is saved for the backward pass, per policy,
and the dtypes of every matmul, norm, softmax and log-sum-exp under bfloat16.

Values are equal under every remat policy and bf16 tracks f32 loosely, so neither can tell a
miswired policy or a norm computed in bf16 from the right one; the saved residuals and the
jaxpr's dtypes can (each check here was seen to fail with such a bug planted).
"""

import contextlib
import dataclasses
import functools
import io
import re

import jax
import jax.numpy as jnp
import pytest

from model_helpers import random_params, tiny_config
from motif_jax import optim
from motif_jax.model import abstract_params, layers, transformer
from motif_jax.sft import BATCH_KEYS, SFTConfig, sft_step
from motif_jax.train_state import init_train_state

B, T = 3, 8  # distinctive leading dims: a saved activation is any residual shaped [(L,) B, T, ...]
CFG = tiny_config()  # gda + PolyNorm: d=128, 20 query heads (16 out), 8 kv heads, h=32, f=256
D, N, K, H, F = CFG.d_model, CFG.num_heads, CFG.num_kv_heads, CFG.head_dim, CFG.d_ff
N_OUT, V = CFG.num_out_heads, CFG.value_dim

# Per-token shapes of the activations each policy keeps per layer, besides the layer input
# (what `jax.checkpoint` always keeps). Names come from `checkpoint_name` in the model.
QKV_ATTN_OUT = [("query_proj", (N, H)), ("key_proj", (K, H)), ("value_proj", (K, H)),
                ("attn_out", (N_OUT, V))]
LAYER_TABLE = {
    "full": [],
    # Every matmul without batch dimensions: q, k, v and o projections, MLP gate and up (the
    # down projection only feeds the residual add, whose backward does not need it).
    "dots": [("dot_general", s) for s in ((N, H), (K, H), (K, H), (D,), (F,), (F,))],
    "attn_out": [("attn_out", (N_OUT, V))],
    "qkv_attn_out": QKV_ATTN_OUT,
    "offload": [("host", s) for _, s in QKV_ATTN_OUT],  # offloaded: named by memory kind
}

_RESIDUAL = re.compile(r"^(\w+)(<\w+>)?\[([\d,]*)\] (.*)$")


def _layer_residuals(remat: str) -> list[tuple[str, tuple[int, ...]]]:
  """(name or origin, per-token shape) of the activations one jitted layer saves."""
  cfg = dataclasses.replace(CFG, num_layers=1, scan_layers=False, remat=remat)
  params = random_params(cfg)["layers"]
  seg_bt = jnp.ones((B, T), jnp.int32)
  cos, sin = layers.rope_tables(transformer.positions_from_segments(seg_bt), H, cfg.rope_theta)
  x_btd = jnp.ones((B, T, D), jnp.float32)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    jax.ad_checkpoint.print_saved_residuals(
        lambda x, p: transformer.apply_layers(x, p, cos, sin, seg_bt, cfg).sum(), x_btd, params)
  saved = []
  for line in out.getvalue().splitlines():
    m = _RESIDUAL.match(line.strip())
    assert m, line
    shape = tuple(int(s) for s in m.group(3).split(",") if s)
    what = m.group(4)
    if shape[:2] != (B, T) or what.startswith(("from the argument", "from a constant")):
      continue  # weights, the layer input, RoPE tables and segment ids
    name = re.search(r"named '(\w+)'", what)
    kind = ("host" if m.group(2) == "<host>" else name.group(1) if name else
            "dot_general" if "output of dot_general" in what else what)
    saved.append((kind, shape[2:]))
  return saved


@pytest.mark.parametrize("remat", sorted(LAYER_TABLE))
def test_each_policy_saves_exactly_its_table_in_a_layer(remat):
  assert sorted(_layer_residuals(remat)) == sorted(LAYER_TABLE[remat])


def test_no_remat_saves_more_than_any_policy():
  none = _layer_residuals("none")
  assert len(none) > max(len(v) for v in LAYER_TABLE.values())
  assert any(shape == (N_OUT, V) for _, shape in none)  # attention output among them


# ---- The jitted sft_step ------------------------------------------------------------------------

def _eqns(jaxpr):
  """Every equation, descending into scan / checkpoint / custom_vjp / pjit / cond sub-jaxprs."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        if hasattr(sub, "eqns"):
          yield from _eqns(sub)
        elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
          yield from _eqns(sub.jaxpr)


def _on_host(aval) -> bool:
  return "host" in str(getattr(aval, "memory_space", "")).lower()


@functools.lru_cache(maxsize=None)
def _step_jaxpr(remat: str, dtype: str = "float32"):
  """The jaxpr of the jitted sft_step (AdamW, one micro-batch) on abstract inputs."""
  model = dataclasses.replace(CFG, remat=remat, dtype=dtype)
  optimizer, schedule = optim.make_optimizer(optim.OptimConfig())
  state = jax.eval_shape(lambda p: init_train_state(p, optimizer), abstract_params(model))
  batch = {k: jax.ShapeDtypeStruct((B, T), jnp.int32) for k in BATCH_KEYS}
  step = jax.jit(functools.partial(sft_step, cfg=SFTConfig(model), optimizer=optimizer,
                                   schedule=schedule))
  return jax.make_jaxpr(step)(state, batch).jaxpr


def _layer_scan(jaxpr):
  """The forward scan over layers: the first scan of num_layers steps carrying [B, T, D]."""
  for eqn in _eqns(jaxpr):
    if (eqn.primitive.name == "scan" and eqn.params["length"] == CFG.num_layers
        and eqn.outvars[0].aval.shape == (B, T, D)):
      return eqn
  raise AssertionError("no layer scan in the step's jaxpr")


def _step_residuals(remat: str):
  """(per-token shape, on host) of each [L, B, T, ...] residual the step's layer scan keeps."""
  scan = _layer_scan(_step_jaxpr(remat))
  lead = (CFG.num_layers, B, T)
  return sorted((v.aval.shape[3:], _on_host(v.aval)) for v in scan.outvars[1:]
                if v.aval.shape[:3] == lead)


STEP_TABLE = {policy: sorted([((D,), False)] +  # the layer input, kept by every policy
                             [(s, policy == "offload") for _, s in saved])
              for policy, saved in LAYER_TABLE.items()}


@pytest.mark.parametrize("remat", sorted(STEP_TABLE))
def test_jitted_sft_step_saves_the_policy_table_per_layer(remat):
  """For offload, the four tensors live in pinned host memory (the CPU backend then keeps them
  on device; the jaxpr says where XLA is asked to put them on a GPU)."""
  assert _step_residuals(remat) == STEP_TABLE[remat]


def test_jitted_sft_step_without_remat_saves_more():
  assert len(_step_residuals("none")) > len(STEP_TABLE["dots"])


# ---- Precision under dtype=bfloat16 -------------------------------------------------------------

F32_PRIMITIVES = ("exp", "log", "rsqrt", "reduce_sum", "reduce_max", "integer_pow", "logistic")


def _is_matmul(eqn) -> bool:
  """A dot_general with a free dimension: a matmul, not a row-wise dot product (those are
  reductions, e.g. flash attention's rowsum(dO ∘ O), and belong in float32)."""
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  lhs, rhs = (v.aval.ndim for v in eqn.invars)
  return lhs > len(lc) + len(lb) or rhs > len(rc) + len(rb)


def test_bfloat16_step_has_bf16_matmuls_and_f32_norms_softmax_lse_lambda_polynorm():
  jaxpr = _step_jaxpr("none", "bfloat16")
  matmul_outs, wrong, seen = [], [], set()
  for eqn in _eqns(jaxpr):
    name = eqn.primitive.name
    dtypes = {str(v.aval.dtype) for v in eqn.invars if hasattr(v.aval, "dtype")}
    if name == "dot_general" and _is_matmul(eqn):
      if dtypes != {"bfloat16"}:
        wrong.append(f"matmul on {dtypes}")
      matmul_outs.append(str(eqn.outvars[0].aval.dtype))
    elif name in F32_PRIMITIVES:
      seen.add(name)
      if dtypes != {"float32"}:  # RMSNorm / PolyNorm / softmax / lse / λ exponentials
        wrong.append(f"{name} on {dtypes}")
  assert not wrong, sorted(set(wrong))
  # Not vacuous: norms (rsqrt), softmax and λ (exp), lse (log), PolyNorm (x³) are all there.
  assert {"exp", "log", "rsqrt", "reduce_sum", "reduce_max", "integer_pow"} <= seen
  # Activations: the residual stream and every projection output are bf16 (attention logits
  # and the loss's logits ask for float32 accumulation).
  assert _layer_scan(jaxpr).outvars[0].aval.dtype == jnp.bfloat16
  # The scan body appears once: at least q/k/v (fused or not), o, gate/up and down projections,
  # each in the forward and in both backward products (input and weight gradients).
  assert matmul_outs.count("bfloat16") >= 4 * 3
