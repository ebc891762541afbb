"""Motif-2-12.7B (Base / Instruct / Reasoning share it): recipe.md §1.1–1.4.

40 layers, d_model 4096, grouped differential attention (40 query heads = 8 groups x (4 signal
+ 1 noise), 16 KV heads as interleaved K1/V1, K2/V2 pairs, head_dim 128, dual-V 256),
PolyNorm-gated MLP of width 16,384, RoPE θ = 1e6, untied 219,520-token embeddings:
12,703,860,896 parameters.

  python -m experiments.describe --config=configs/motif2_12b.py --mesh=fsdp=8

Variants (`--config=configs/motif2_12b.py:<arg>`):
  smoke    a 2-layer model with the same head layout at small width (CPU, seconds)
  seq=N    training / report sequence length in tokens (default 65,536)
  cp=N     context parallelism: mesh sequence=N, weights sharded over fsdp x sequence
           (64K SFT: cp=8 is 52.8 GiB per device by experiments.memory_plan, docs/memory_plan.md)
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, smoke=False, seq=65_536, cp=0)
  config = ml_collections.ConfigDict()
  config.model = common.model(
      vocab_size=219_520,
      d_model=4096,
      num_layers=40,
      num_heads=40,  # 8 groups x (4 signal + 1 noise)
      num_kv_heads=16,  # 8 K1/V1 + 8 K2/V2, interleaved
      head_dim=128,
      d_ff=16_384,
      attention="gda",
      gda_ratio=4,
      mlp="polynorm",
      rope_theta=1_000_000.0,
      rms_norm_eps=1e-6,  # read the released config.json for the exact values (recipe §1.1)
      attn_rms_norm_eps=1e-5,
      tie_embeddings=False,
      max_seq_len=args.seq,
      dtype="bfloat16",
      param_dtype="float32",
      remat="full",
  )
  config.mesh = common.mesh(fsdp=8)
  if args.smoke:
    config.model.update(dict(vocab_size=1024, d_model=128, num_layers=2, head_dim=16, d_ff=256,
                             max_seq_len=256, dtype="float32", remat="none"))
    config.mesh = common.mesh()
  if args.cp:
    config.mesh = common.mesh(sequence=args.cp)
    rules = config.model.sharding.to_dict()
    rules["embed"] = ("fsdp", "sequence")  # ZeRO-3 over the context ranks too
    config.model.sharding = ml_collections.ConfigDict(rules)
  return config
