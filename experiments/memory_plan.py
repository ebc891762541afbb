"""Per-device memory of the SFT train step, AOT-compiled on fake CPU devices (nothing allocated).

  python -m experiments.memory_plan --config=configs/motif2_12b.py --seq_len=65536 \
      --mesh=data=1,fsdp=8,tensor=1,sequence=1 --remat=full --out=/tmp/plan.json
  python -m experiments.memory_plan --config=configs/motif2_12b.py --seq_len=65536 \
      --search --budget_gib=80 --devices=8

The first form reports one cell (AOT argument / output / temp / total bytes and the analytic
estimate); `--search` plans a small grid of meshes and remat policies for `--devices` and marks
the cheapest that fits the budget. Accepts any config with `model` (and optionally `optim`).
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

from motif_jax import memory_plan  # noqa: E402
from motif_jax import sharding as shd  # noqa: E402
from motif_jax.model import ModelConfig  # noqa: E402
from motif_jax.optim import OptimConfig  # noqa: E402
from motif_jax.launch import distributed  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].",
                                          lock_config=True)
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Tokens per sequence (default: max_seq_len).")
_MESH = flags.DEFINE_string("mesh", None, "data=N,fsdp=N,tensor=N,sequence=N (default: config)")
_REMAT = flags.DEFINE_string("remat", None, "Remat policy (default: model.remat).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global rows (default: one per batch shard).")
_LOSS = flags.DEFINE_string("loss_impl", "xla", "Fused cross-entropy impl: xla | pallas.")
_SEARCH = flags.DEFINE_bool("search", False, "Plan a grid of meshes x remat policies.")
_DEVICES = flags.DEFINE_integer("devices", 8, "Device count for --search.")
_REMATS = flags.DEFINE_list("remats", ["qkv_attn_out", "attn_out", "full"],
                            "Remat policies tried by --search.")
_BUDGET = flags.DEFINE_float("budget_gib", 80.0, "Per-device budget for --search, GiB.")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")


def main(argv):
  del argv
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  config = _CONFIG.value
  model = ModelConfig.from_config_dict(config.model)
  optim = OptimConfig.from_config_dict(config.optim) if "optim" in config else OptimConfig()
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
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
