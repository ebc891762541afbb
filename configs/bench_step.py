"""Presets of the training-step benchmark (python -m experiments.bench_step).

  python -m experiments.bench_step --config=configs/bench_step.py:sbs --out=/tmp/step_sbs.json
  python -m experiments.bench_step --config=configs/bench_step.py:tiny --out=/tmp/step_tiny.json

Variants (one of):
  sbs (default): the Tunix side-by-side model of ../shared/peers/ (random Llama: vocab 512, d 256,
    4 layers, 4 q / 2 kv heads x 64, SwiGLU 1024, untied, fp32), batch 8 x 256, AdamW lr 1e-4,
    wd 0.01, b2 0.999, no clipping, constant lr (as the peers' scripts).
  tiny: the tiny Motif model (configs/tiny.py) at SFT stage 1's shape (16 x 512, its optimizer).
  quickstart: the quickstart's model and shape (configs/sft.py:quickstart, 16 x 256).
  smoke: the 2-layer tiny model at 2 x 32, two timed steps (tests).
"""

import ml_collections

from configs import common, sft, tiny


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, sbs=False, tiny=False, quickstart=False, smoke=False)
  config = ml_collections.ConfigDict()
  config.bench = ml_collections.ConfigDict(dict(
      name="sbs",
      batch_size=8,  # rows per step
      seq_len=256,  # tokens per row
      num_microbatches=1,
      loss_impl="xla",  # fused cross-entropy: xla | pallas | reference
      warmup=3,  # untimed steps after the compile
      steps=10,  # timed steps (median, min, max)
      piece_rounds=5,  # round-robin rounds of the per-piece breakdown; 0 = no breakdown
      matmul_reps=10,  # timed calls of the reference matmul
      seed=0,
  ))
  if args.tiny or args.quickstart or args.smoke:
    run = sft.get_config("quickstart" if args.quickstart else "smoke" if args.smoke else None)
    config.model = run.model
    config.optim = run.optim
    config.bench.update(dict(name="quickstart" if args.quickstart else "smoke" if args.smoke
                             else "tiny", batch_size=run.train.batch_size,
                             seq_len=run.data.seq_len))
    if args.smoke:
      config.model = tiny.get_config("smoke").model
      config.bench.update(dict(batch_size=2, seq_len=32, warmup=1, steps=2, piece_rounds=1,
                               matmul_reps=2))
    return config
  config.model = common.model(
      vocab_size=512, d_model=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=64,
      d_ff=1024, attention="gqa", mlp="swiglu", rms_norm_eps=1e-5, tie_embeddings=False,
      max_seq_len=256, dtype="float32", scan_unroll=4)
  config.optim = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-4, warmup_steps=0, decay_steps=1000, final_lr_ratio=1.0,
      weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0, muon_beta=0.95,
      muon_adam_lr_ratio=1.0))
  return config
