"""Section 6's run: memory of the fused paths against the naive ones, AOT-compiled (nothing is
allocated), as one sweep point of the study:

  python -m motif_jax.reproduce.memory --config=configs/reproduce.py:run=memory --workdir=DIR

- kernels: temp bytes of loss + gradients of the cross-entropy (`reference`: the full
  [tokens, vocab] logits; `xla`: the fused vocab-chunked loss) and of GDA attention (`reference`:
  dense [seq, seq] scores; `xla`: blockwise flash attention) at the Motif shapes of
  `motif_jax.kernel_bench`, or read from a kernel benchmark JSON (`memory.kernel_json`, the
  output of experiments.bench_kernels);
- planner: per-device bytes of the whole SFT step (`motif_jax.memory_plan.plan`) with each loss
  implementation in `memory.plan_loss_impls` on one mesh / sequence length / remat cell.

Writes DIR/memory.json (read by the report) and a line per figure to stdout.
"""

import os

# Fake CPU devices for the planner's mesh: fixed before jax creates its backend.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from motif_jax import kernel_bench, memory_plan  # noqa: E402
from motif_jax import sharding as shd  # noqa: E402
from motif_jax.launch import sweep as sweep_lib  # noqa: E402
from motif_jax.model import ModelConfig  # noqa: E402
from motif_jax.optim import OptimConfig  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/reproduce.py:run=memory",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
NAIVE, FUSED = "reference", "xla"


def measure_kernels(log=print) -> dict:
  """The kernel benchmark's memory figures for the naive and fused implementations."""
  out = {"cross_entropy": {}, "attention": {}, "shapes": {
      "cross_entropy": kernel_bench.CE_SHAPES, "attention": kernel_bench.ATTN_SHAPES}}
  ce = {k: v for k, v in kernel_bench.CE_SHAPES.items() if k != "tokens"}
  attn = {k: v for k, v in kernel_bench.ATTN_SHAPES.items() if k != "seq"}
  for impl in (NAIVE, FUSED):
    out["cross_entropy"][impl] = {
        f"temp_bytes_T{t}": kernel_bench.cross_entropy_temp_bytes(impl, t, **ce)
        for t in kernel_bench.CE_SHAPES["tokens"]}
    out["attention"][impl] = {
        f"temp_bytes_S{s}": kernel_bench.attention_temp_bytes(impl, s, **attn)
        for s in kernel_bench.ATTN_SHAPES["seq"]}
    log(f"kernels {impl}: {out['cross_entropy'][impl]} {out['attention'][impl]}")
  return out


def plan_cells(cfg, log=print) -> list[dict]:
  config = sweep_lib.load_config(cfg.plan_config)
  model = ModelConfig.from_config_dict(config.model)
  optim = OptimConfig.from_config_dict(config.optim) if "optim" in config else OptimConfig()
  mesh_shape = shd.parse_mesh(cfg.plan_mesh)
  if math.prod(mesh_shape.values()) > 8:
    raise ValueError(f"memory.plan_mesh={cfg.plan_mesh} needs more than the 8 fake devices")
  rows = []
  for impl in [s for s in cfg.plan_loss_impls.split(",") if s]:
    start = time.perf_counter()
    row = memory_plan.plan(model, optim, mesh_shape, seq_len=cfg.plan_seq_len,
                           remat=cfg.plan_remat, loss_impl=impl)
    row.update(loss_impl=impl, config=cfg.plan_config, compile_s=time.perf_counter() - start)
    log(f"planner {impl}: {row['per_device_bytes'] / memory_plan.GIB:.3f} GiB per device")
    rows.append(row)
  return rows


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cfg = _CONFIG.value.memory
  if cfg.kernel_json:
    kernels = json.loads(Path(cfg.kernel_json).read_text())
    source = f"read from {cfg.kernel_json} (experiments.bench_kernels output)"
  else:
    kernels, source = measure_kernels(), "measured by this run (AOT compile, nothing allocated)"
  result = {"kernels": kernels, "kernel_source": source, "plan": plan_cells(cfg),
            "plan_cell": {"config": cfg.plan_config, "mesh": cfg.plan_mesh,
                          "seq_len": cfg.plan_seq_len, "remat": cfg.plan_remat}}
  workdir = Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "memory.json").write_text(json.dumps(result, indent=2, default=str))
  print(f"wrote {workdir / 'memory.json'}")


if __name__ == "__main__":
  app.run(main)
