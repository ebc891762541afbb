"""The AOT memory planner (motif_jax.memory_plan) and its CLI, on the tiny model."""

import dataclasses
import json
import subprocess
import sys

import jax
import pytest

from model_helpers import tiny_config
from motif_jax import memory_plan, trainer
from motif_jax import sharding as shd
from motif_jax.optim import OptimConfig, make_optimizer

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
