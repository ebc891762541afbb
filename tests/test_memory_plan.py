"""The AOT memory planner (motif_jax.memory_plan) and its CLI, on the tiny model."""

import dataclasses
import json
import subprocess
import sys

import jax
import pytest

from configs import rl as rl_config
from model_helpers import tiny_config
from motif_jax import memory_plan, memory_plan_rl, trainer
from motif_jax import sharding as shd
from motif_jax.model import accounting
from motif_jax.optim import OptimConfig, make_optimizer
from motif_jax.rl.config import RLConfig

KEYS = ("per_device_bytes", "argument_bytes", "temp_bytes", "output_bytes", "analytic_bytes",
        "mesh", "remat", "seq_len")


def test_aot_bytes_grow_about_linearly_from_4k_to_8k_tokens():
  cfg = tiny_config()
  rows = {t: memory_plan.plan(cfg, OptimConfig(), dict(fsdp=2), seq_len=t, remat="full")
          for t in (4096, 8192)}
  for row in rows.values():
    assert set(KEYS) <= set(row)
    assert row["per_device_bytes"] == (row["argument_bytes"] + row["output_bytes"]
                                       - row["alias_bytes"] + row["temp_bytes"])
  # Params and optimizer state do not change with the sequence; activations double. A quadratic
  # attention buffer (a [t, s] tensor) would make the ratio about 4.
  ratio = rows[8192]["per_device_bytes"] / rows[4096]["per_device_bytes"]
  assert 1.5 < ratio < 2.3, ratio
  assert rows[8192]["argument_bytes"] - rows[4096]["argument_bytes"] == 5 * 4096 * 4  # one more 4K row slice of 5 int32 keys
  analytic = rows[8192]["analytic_bytes"] / rows[4096]["analytic_bytes"]
  assert 1.5 < analytic < 2.3, analytic


def test_analytic_estimate_shrinks_with_remat_and_devices():
  cfg = tiny_config()
  est = lambda remat, fsdp: memory_plan.analytic_memory(  # noqa: E731
      dataclasses.replace(cfg, remat=remat), dict(fsdp=fsdp), seq_len=4096, batch_size=fsdp)
  assert est("full", 2)["saved_activation_bytes"] < est("qkv_attn_out", 2)[
      "saved_activation_bytes"] < est("none", 2)["saved_activation_bytes"]
  assert est("full", 4)["param_bytes"] < est("full", 2)["param_bytes"]


@pytest.mark.parametrize("mode", ["single", "search"])
def test_cli_writes_json(tmp_path, mode):
  out = tmp_path / "plan.json"
  args = [sys.executable, "-m", "experiments.memory_plan", "--seq_len=256", f"--out={out}"]
  # single: the Motif head layout at smoke width, context-parallel over the config's mesh.
  # search: a 0.05 GiB budget falls between the rows (fsdp=2 ~0.062 GiB, sequence=2 ~0.039,
  # tensor=2 ~0.032 with tiny's scan_unroll=4, 2026-12-05), so the first, cheapest-to-run row does
  # not fit and two later ones do: the chosen row must be the first of those.
  args += (["--config=configs/motif2_12b.py:smoke,cp=2", "--remat=full"] if mode == "single"
           else ["--config=configs/tiny.py:smoke", "--search", "--devices=2", "--budget_gib=0.05",
                 "--remats=full"])
  run = subprocess.run(args, capture_output=True, text=True, check=True)
  result = json.loads(out.read_text())
  if mode == "single":
    assert set(KEYS) <= set(result) and result["seq_len"] == 256 and result["remat"] == "full"
    assert result["mesh"]["sequence"] == 2 and result["embed_axes"] == ["fsdp", "sequence"]
  else:
    rows, budget = result["rows"], int(0.05 * memory_plan.GIB)
    # Rows come cheapest to run first (remat by recomputation, then the mesh grid's order); the
    # chosen one is the first that fits, and "fits" is the AOT per-device total within budget.
    assert [r["mesh"] for r in rows] == memory_plan.candidate_meshes(2, tiny_config())
    for r in rows:
      assert r["fits"] == (r["per_device_bytes"] <= budget), r
    fitting = [i for i, r in enumerate(rows) if r["fits"]]
    assert fitting and [i for i, r in enumerate(rows) if r["chosen"]] == fitting[:1]
    chosen = memory_plan.format_row(rows[fitting[0]])
    assert f"cheapest that fits: {chosen}" in run.stdout


def test_optimizer_moments_are_sharded_like_their_params():
  # The planner caught this: left to the compiler, AdamW's zero moments came out replicated.
  cfg = tiny_config()
  mesh = shd.make_mesh(dict(fsdp=2, tensor=4))
  for name in ("adamw", "muon"):
    optimizer, _ = make_optimizer(OptimConfig(name=name))
    with jax.set_mesh(mesh):
      _, shardings = trainer.abstract_train_state(cfg, optimizer, 0, mesh)
    wq = shardings.params["layers"]["attn"]["wq"].spec
    moments = [s.spec for path, s in jax.tree_util.tree_flatten_with_path(shardings.opt_state)[0]
               if jax.tree_util.keystr(path).endswith("['wq']")]
    assert moments and all(m == wq for m in moments), (name, moments)


# ---- the RL step (motif_jax.memory_plan_rl) -----------------------------------------------------

# 2 prompts x 4 samples of up to 16 + 1000 tokens, packed one per row into 16 x 1024 rows (room
# for 8 samples), on 2 devices.
RL_SHAPE = memory_plan_rl.RLShape(prompts=2, samples=4, prompt_len=16, response_len=1000,
                                  rows=16, seq_len=1024, num_microbatches=4)


def _rl_plan(shape=RL_SHAPE, **rl_overrides):
  rl = dataclasses.replace(RLConfig.from_config_dict(rl_config.get_config("smoke").rl),
                           **rl_overrides)
  return memory_plan_rl.plan_rl(tiny_config(), OptimConfig(), rl, dict(fsdp=2), shape,
                                remat="full", budget_bytes=memory_plan.GIB)


@pytest.fixture(scope="module")
def rl_plans():
  return {"base": _rl_plan(), "reference": _rl_plan(kl_coef=0.1),
          "samples": _rl_plan(dataclasses.replace(RL_SHAPE, samples=8))}


def test_rl_plan_grows_by_the_hand_computed_kv_cache_and_reference(rl_plans):
  cfg, base, ref, more = tiny_config(), rl_plans["base"], rl_plans["reference"], rl_plans[
      "samples"]
  # Cache: K and V per layer, [rows / 2 devices, kv heads, 16 (prompt bucket) + 1000, head_dim],
  # float32; the prompts' prefill cache the rows are gathered from has 1 row per device.
  per_row = 2 * cfg.num_layers * cfg.num_kv_heads * (16 + 1000) * cfg.head_dim * 4
  assert base["cache_len"] == 1016
  assert base["kv_cache_bytes"] == 4 * per_row and more["kv_cache_bytes"] == 8 * per_row
  assert base["prefill_cache_bytes"] == more["prefill_cache_bytes"] == per_row
  # Twice the samples: the rollout phase grows by the cache and the 12-byte outputs of 4 more
  # rows per device, and nothing else changes (the same update batch).
  assert more["rollout_bytes"] - base["rollout_bytes"] == 4 * per_row + 4 * 1000 * 12
  assert more["update_bytes"] == base["update_bytes"]
  # The reference: a copy of the params (float32, sharded like them), resident in every phase.
  params = accounting.param_bytes_per_device(dataclasses.replace(cfg, max_seq_len=1024),
                                             {"fsdp": 2})
  assert base["param_bytes"] == params and base["reference_bytes"] == 0
  assert ref["reference_bytes"] == params
  assert ref["rollout_bytes"] - base["rollout_bytes"] == params
  ref_key = 16 // 2 * 1024 * 4  # and the update batch gains ref_logprobs, float32
  assert ref["score_bytes"] - base["score_bytes"] == params + ref_key
  assert ref["update_bytes"] - base["update_bytes"] >= params + ref_key
  for plan in rl_plans.values():
    phases = {p: plan[f"{p}_bytes"] for p in ("rollout", "score", "update")}
    assert plan["per_device_bytes"] == max(phases.values()) == phases[plan["peak_phase"]]
    assert plan["fits"] == (plan["per_device_bytes"] <= memory_plan.GIB)
    # Sampler rows that fit beside the resident state and one prefill row, whole rows per
    # device, 2 devices.
    free = memory_plan.GIB - (plan["param_bytes"] + plan["optimizer_bytes"]
                              + plan["reference_bytes"] + plan["decode_weight_bytes"])
    assert plan["rollout_rows_that_fit"] == (free // per_row - 1) * 2
  # π_old is scored in the update's 4 micro-batches, so the score pass (no gradients, no
  # optimizer temporaries) stays below the update, which is the peak here.
  assert base["peak_phase"] == "update" and base["score_bytes"] < base["update_bytes"]
  assert ref["per_device_bytes"] > base["per_device_bytes"]


def test_kv_cache_estimate_bounds_the_compiled_sampler():
  # The shape-based rollout figure against the jitted sampler compiled on the same shapes: the
  # cache must be inside its temp, and the estimate (cache + prefill cache + decode weights +
  # outputs) within 15% of its temp + outputs (measured: 0.8% under here, 7% over at 4x rows).
  cfg = dataclasses.replace(tiny_config(), max_seq_len=1024)
  mesh = shd.make_mesh(dict(fsdp=2))
  compiled = memory_plan_rl.aot_rollout_memory(cfg, mesh, RL_SHAPE)
  cache = memory_plan_rl.kv_cache_bytes(cfg, mesh, rows=8, cache_len=1016)
  estimate = (cache + memory_plan_rl.kv_cache_bytes(cfg, mesh, rows=2, cache_len=1016)
              + memory_plan_rl.decode_weight_bytes(cfg, mesh)
              + memory_plan_rl.rollout_output_bytes(cfg, mesh, rows=8, response_len=1000))
  assert cache < compiled["temp_bytes"]
  assert 0.85 < (compiled["temp_bytes"] + compiled["output_bytes"]) / estimate < 1.15


def test_rl_shape_rejects_rows_that_cannot_hold_the_trajectories():
  with pytest.raises(ValueError, match="rows=4 x seq_len=1024 cannot hold"):
    dataclasses.replace(RL_SHAPE, rows=4, num_microbatches=1)
  with pytest.raises(ValueError, match="num_microbatches=3"):
    dataclasses.replace(RL_SHAPE, num_microbatches=3)


def test_cli_rl_step_reads_the_rl_config_and_writes_json(tmp_path):
  out = tmp_path / "rl_plan.json"
  run = subprocess.run([sys.executable, "-m", "experiments.memory_plan",
                        "--config=configs/rl.py:smoke", "--step=rl", "--mesh=fsdp=2",
                        "--prompt_len=32", "--budget_gib=0.1", f"--out={out}"],
                       capture_output=True, text=True, check=True)
  result, config = json.loads(out.read_text()), rl_config.get_config("smoke")
  train, model = config.train, tiny_config()
  assert (result["step"], result["prompts"], result["samples"]) == (
      "rl", train.prompts_per_batch, config.rl.group_size)
  assert (result["rows"], result["seq_len"], result["response_len"]) == (
      train.rows, train.seq_len, train.max_new_tokens)
  assert result["cache_len"] == 32 + train.max_new_tokens  # a 32-token prompt is its own bucket
  cfg = dataclasses.replace(model, **{k: config.model[k] for k in (
      "num_layers", "num_kv_heads", "head_dim")})
  rows_per_device = -(-train.prompts_per_batch * config.rl.group_size // 2)
  assert result["kv_cache_bytes"] == (2 * cfg.num_layers * rows_per_device * cfg.num_kv_heads
                                      * result["cache_len"] * cfg.head_dim * 4)
  assert result["fits"] == (result["per_device_bytes"] <= int(0.1 * memory_plan.GIB))
  assert "total (peak, " in run.stdout and "KV cache" in run.stdout
