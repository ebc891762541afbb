"""Print a model's parameter counts, per-device parameter bytes and forward FLOPs per token.

Computed from shapes only: nothing is allocated, so the 12.7B model is described on a laptop.

  python -m experiments.describe --config=configs/motif2_12b.py
  python -m experiments.describe --config=configs/tiny.py --mesh=data=1,fsdp=2,tensor=4,sequence=1
"""

import json

from absl import app, flags
from ml_collections import config_flags

from motif_jax import sharding as shd
from motif_jax.model import ModelConfig, accounting, validate_sharding
from motif_jax.launch import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:variant].",
                                          lock_config=True)
_MESH = flags.DEFINE_string("mesh", None, "data=N,fsdp=N,tensor=N,sequence=N (default: config.mesh)")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Tokens per sequence for FLOPs "
                                "(default: model.max_seq_len).")
_OUT = flags.DEFINE_string("out", None, "Optional JSON output path.")


def main(argv):
  del argv
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  config = _CONFIG.value
  try:
    cfg = ModelConfig.from_config_dict(config.model)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  try:
    mesh_shape = shd.parse_mesh(_MESH.value or ",".join(f"{k}={v}" for k, v in config.mesh.items()))
    if -1 in mesh_shape.values():
      raise ValueError("describe needs explicit mesh sizes (no -1)")
    validate_sharding(cfg, mesh_shape)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  seq_len = _SEQ_LEN.value or cfg.max_seq_len
  counts = accounting.param_breakdown(cfg)
  total = sum(counts.values())
  per_device = accounting.param_bytes_per_device(cfg, mesh_shape)
  flops = accounting.forward_flops_per_token(cfg, seq_len)

  print(f"model: {cfg.attention} attention, {cfg.mlp} MLP, {cfg.num_layers} layers, "
        f"d_model {cfg.d_model}, vocab {cfg.vocab_size}")
  print(f"{'component':<14}{'parameters':>18}{'per layer':>16}")
  for name, count in counts.items():
    per_layer = f"{count // cfg.num_layers:,}" if name in ("attn", "mlp", "layer_norms") else ""
    print(f"{name:<14}{count:>18,}{per_layer:>16}")
  print(f"{'total':<14}{total:>18,}")
  mesh_text = ",".join(f"{k}={v}" for k, v in mesh_shape.items())
  print(f"parameter bytes per device on mesh {mesh_text} ({cfg.param_dtype}): "
        f"{per_device:,} ({per_device / 2**30:.2f} GiB)")
  print(f"forward FLOPs per token at seq_len {seq_len:,}: {flops['total']:,} "
        f"(matmul {flops['matmul']:,}, causal attention {flops['attention']:,})")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(dict(parameters=counts, total_parameters=total, mesh=mesh_shape,
                     param_bytes_per_device=per_device, seq_len=seq_len,
                     forward_flops_per_token=flops), f, indent=2)


if __name__ == "__main__":
  app.run(main)
