"""bench_step runs on its smoke preset and writes its fields; scan with unroll == unrolled."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from model_helpers import random_params, random_tokens, tiny_config

from motif_jax.launch import host_memory
from motif_jax.model import forward_logits

ROOT = Path(__file__).resolve().parents[1]


def test_bench_step_smoke_writes_the_expected_fields(tmp_path):
  out = tmp_path / "step.json"
  subprocess.run([sys.executable, "-m", "experiments.bench_step",
                  "--config=configs/bench_step.py:smoke", f"--out={out}"],
                 cwd=ROOT, check=True, capture_output=True, timeout=300)
  result = json.loads(out.read_text())
  assert result["preset"] == "smoke" and result["step"] == "sft"
  assert result["timing"]["wall"]["median_s"] > 0
  tokens = result["bench"]["batch_size"] * result["bench"]["seq_len"]
  assert result["flops"]["tokens"] == tokens
  np.testing.assert_allclose(result["tokens_per_s"], tokens / result["timing"]["wall"]["median_s"])
  assert result["matmul"]["gflops_best"] > 0 and result["achieved_gflops"] > 0
  assert set(result["pieces"]["pieces"]) == {"embedding", "attention", "mlp", "norm",
                                            "lm_head_loss", "optimizer_update"}
  assert np.isfinite(result["metrics"]["loss/ce"])
  # The matmul floor runs exactly the counted weight-matmul FLOPs (3x the forward's).
  from configs import bench_step
  from motif_jax.model import ModelConfig, accounting
  model = ModelConfig.from_config_dict(bench_step.get_config("smoke").model)
  matmul_per_token = accounting.forward_flops_per_token(model, result["bench"]["seq_len"])["matmul"]
  assert result["matmul_floor"]["flops"] == 3 * matmul_per_token * tokens
  assert result["matmul_floor"]["dots"] == 3 * len(accounting.matmul_shapes(model))
  att = result["attention_floor"]  # one layer's dense core: b*kv rows of (heads/kv)*t queries
  b, t = result["bench"]["batch_size"], result["bench"]["seq_len"]
  assert att["shape"] == {"batch": b * model.num_kv_heads,
                          "rows": model.num_heads // model.num_kv_heads * t, "keys": t,
                          "head_dim": model.head_dim, "value_dim": model.value_dim}
  assert att["flops"] == 2 * b * model.num_kv_heads * (model.num_heads // model.num_kv_heads * t) \
      * t * 3 * (model.head_dim + model.value_dim)
  assert att["dots_min_s"] > 0 and att["softmax_min_s"] > 0
  np.testing.assert_allclose(result["step_over_matmul_floor"],
                             result["timing"]["wall"]["median_s"] / result["matmul_floor"]["min_s"])
  # `python -m experiments.*` re-executed itself with the huge-page tunable where it helps.
  wanted = host_memory.huge_page_env(os.environ, glibc=host_memory._glibc_version(),
                                     thp_mode=host_memory._thp_mode())
  expected = (wanted or os.environ).get("GLIBC_TUNABLES", "")
  assert result["glibc_tunables"] == expected


def _loss_and_grads(params, tokens, cfg):
  def loss(p):
    logits = forward_logits(p, tokens, cfg)
    return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])
  return jax.jit(jax.value_and_grad(loss))(params)


def test_scan_unroll_equals_unrolled_loop():
  cfg = tiny_config("gqa", num_layers=3)
  params = random_params(cfg)
  tokens = random_tokens(cfg, 2, 8)
  loss_ref, grads_ref = _loss_and_grads(params, tokens, dataclasses.replace(cfg, scan_layers=False))
  for unroll in (2, 3):  # partial (a remainder layer) and full
    loss, grads = _loss_and_grads(params, tokens, dataclasses.replace(cfg, scan_unroll=unroll))
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
