"""Per-device memory of the SFT train step, AOT-compiled on fake CPU devices (nothing allocated).

  python -m experiments.memory_plan --config=configs/motif2_12b.py --seq_len=65536 \
      --mesh=data=1,fsdp=8,tensor=1,sequence=1 --remat=full --out=/tmp/plan.json
  python -m experiments.memory_plan --config=configs/motif2_12b.py --seq_len=65536 \
      --search --budget_gib=80 --devices=8

The first form reports one cell (AOT argument / output / temp / total bytes and the analytic
estimate); `--search` plans a small grid of meshes and remat policies for `--devices` and marks
the cheapest that fits the budget. Accepts any config with `model` (and optionally `optim`).

The RL step (`--step=rl`, an RL config such as configs/rl.py:motif): params, optimizer state, the
reference policy (rl.kl_coef > 0), the sampler's KV cache for train.prompts_per_batch x
rl.group_size rows at --prompt_len + train.max_new_tokens, the scoring pass and the AOT-compiled
`rl_step` on train.rows x train.seq_len, per device, and whether the peak fits --budget_gib
(motif_jax/memory_plan_rl.py):

  python -m experiments.memory_plan --config=configs/rl.py:motif --step=rl \
      --mesh=data=1,fsdp=1,tensor=1,sequence=8 --prompt_len=1024 --response_len=65536 \
      --rows=2048 --seq_len=66560 --num_microbatches=2048 --budget_gib=74.5
"""

import math
import os
import re
import sys

# The fake device count must be fixed before jax is imported: the largest of --devices (8 by
# default, enough for config meshes) and the --mesh product (an argv peek; absl parses below).
_argv = " ".join(sys.argv)
_sizes = [int(n) for n in re.findall(r"(?:data|fsdp|tensor|sequence)=(\d+)", _argv)]
_dev = re.search(r"--devices[= ](\d+)", _argv)
_count = max(int(_dev.group(1)) if _dev else 8, math.prod(_sizes))
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={_count}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from motif_jax import memory_plan, memory_plan_rl  # noqa: E402
from motif_jax import sharding as shd  # noqa: E402
from motif_jax.model import ModelConfig  # noqa: E402
from motif_jax.optim import OptimConfig  # noqa: E402
from motif_jax.rl.config import RLConfig  # noqa: E402
from motif_jax.launch import distributed  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].",
                                          lock_config=True)
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Tokens per sequence (default: max_seq_len; "
                                "RL: train.seq_len).")
_MESH = flags.DEFINE_string("mesh", None, "data=N,fsdp=N,tensor=N,sequence=N (default: config)")
_REMAT = flags.DEFINE_string("remat", None, "Remat policy (default: model.remat).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global rows (default: one per batch shard).")
_LOSS = flags.DEFINE_string("loss_impl", "xla", "Fused cross-entropy impl: xla | pallas.")
_SEARCH = flags.DEFINE_bool("search", False, "Plan a grid of meshes x remat policies.")
_DEVICES = flags.DEFINE_integer("devices", 8, "Device count for --search.")
_REMATS = flags.DEFINE_list("remats", ["qkv_attn_out", "attn_out", "full"],
                            "Remat policies tried by --search.")
_BUDGET = flags.DEFINE_float("budget_gib", 80.0, "Per-device budget (--search, --step=rl), GiB.")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")
_STEP = flags.DEFINE_enum("step", "sft", ["sft", "rl"], "Which train step to plan.")
_PROMPTS = flags.DEFINE_integer("prompts", None, "RL: prompts per rollout batch "
                                "(default train.prompts_per_batch).")
_SAMPLES = flags.DEFINE_integer("samples", None, "RL: samples per prompt (default rl.group_size).")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 1024, "RL: longest prompt, tokens.")
_RESPONSE_LEN = flags.DEFINE_integer("response_len", None, "RL: completion budget "
                                     "(default train.max_new_tokens).")
_ROWS = flags.DEFINE_integer("rows", None, "RL: packed update rows (default train.rows).")
_MICRO = flags.DEFINE_integer("num_microbatches", None, "RL: default train.num_microbatches.")


def main(argv):
  del argv
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  config = _CONFIG.value
  model = ModelConfig.from_config_dict(config.model)
  optim = OptimConfig.from_config_dict(config.optim) if "optim" in config else OptimConfig()
  if _STEP.value == "rl":
    return plan_rl(config, model, optim)
  seq_len = _SEQ_LEN.value or model.max_seq_len
  print(memory_plan.TABLE_HEADER)
  if _SEARCH.value:
    rows = memory_plan.search(model, optim, devices=_DEVICES.value, seq_len=seq_len,
                              budget_bytes=int(_BUDGET.value * memory_plan.GIB),
                              remats=_REMATS.value, loss_impl=_LOSS.value)
    best = [r for r in rows if r["chosen"]]
    print("cheapest that fits:", memory_plan.format_row(best[0]) if best else "none")
    result = {"budget_gib": _BUDGET.value, "devices": _DEVICES.value, "rows": rows}
  else:
    mesh_text = _MESH.value or ",".join(f"{k}={v}" for k, v in config.mesh.items())
    result = memory_plan.plan(model, optim, shd.parse_mesh(mesh_text), seq_len=seq_len,
                              remat=_REMAT.value or model.remat, batch_size=_BATCH.value,
                              loss_impl=_LOSS.value)
    print(memory_plan.format_row(result))
  _write(result)


def plan_rl(config, model, optim):
  if "rl" not in config or "train" not in config:
    raise SystemExit("error: --step=rl needs an RL config with rl and train sections "
                     "(configs/rl.py)")
  train = config.train
  try:
    shape = memory_plan_rl.RLShape(
        prompts=_PROMPTS.value or train.prompts_per_batch,
        samples=_SAMPLES.value or config.rl.group_size, prompt_len=_PROMPT_LEN.value,
        response_len=_RESPONSE_LEN.value or train.max_new_tokens, rows=_ROWS.value or train.rows,
        seq_len=_SEQ_LEN.value or train.seq_len,
        num_microbatches=_MICRO.value or train.num_microbatches,
        sft_rows=train.get("sft_rows", 0) if config.rl.get("sft_coef", 0) else 0)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  mesh_text = _MESH.value or ",".join(f"{k}={v}" for k, v in config.mesh.items())
  result = memory_plan_rl.plan_rl(
      model, optim, RLConfig.from_config_dict(config.rl), shd.parse_mesh(mesh_text), shape,
      remat=_REMAT.value or model.remat, loss_impl=_LOSS.value,
      budget_bytes=int(_BUDGET.value * memory_plan.GIB))
  print(memory_plan_rl.format_rl(result))
  _write(result)


def _write(result: dict) -> None:
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
