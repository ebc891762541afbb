"""SFT of the tiny Motif-architecture model on the aligned toy corpus: a two-stage curriculum.

  python -m experiments.sft --config=configs/sft.py:stage1 --workdir=/tmp/sft1
  python -m experiments.sft --config=configs/sft.py:stage2 --workdir=/tmp/sft2 \
      --config.train.init_from=/tmp/sft1

Stage 1 trains at short context (512-token rows); stage 2 starts from stage 1's final params with
a fresh optimizer and its own schedule at long context (2048-token rows, lower peak LR).
`smoke` runs a few steps in seconds (tests); `motif` switches the model to Motif-2-12.7B
(configs/motif2_12b.py numbers, bf16 compute, full remat) for GPU hosts.

`quickstart` is what `make quickstart` trains before RL: the 2-layer tiny model (0.80M
parameters, 1,024-id vocabulary) on the `small` toy ladder (values in [0, 99], single-digit steps,
lists of 3-5 digits; difficulty tiers 1-4) with the toy word tokenizer (whole numbers and words),
750 steps of 8 x 384 tokens, sized so that on 2 CPU cores it learns the easiest tier and part of
the middle ones in about 6 minutes (README, Quickstart).

Variants: stage1 (default), stage2, smoke, quickstart, motif, steps=N, muon.
"""

import ml_collections

from configs import common, motif2_12b, tiny


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, stage1=False, stage2=False, smoke=False, quickstart=False,
                          motif=False, steps=0, muon=False)
  config = ml_collections.ConfigDict()
  small = args.smoke or args.quickstart
  config.model = (motif2_12b if args.motif else tiny).get_config("smoke" if small else None).model
  config.mesh = common.mesh()
  batch_size = ml_collections.FieldReference(16)
  seq_len = ml_collections.FieldReference(2048 if args.stage2 else 512)
  num_steps = ml_collections.FieldReference(args.steps or (150 if args.stage2 else 300))

  config.data = common.data()
  config.data.inputs = "toy:aligned"  # the target-style teacher, verified and filtered
  config.data.global_batch_size = batch_size
  config.data.seq_len = seq_len
  config.model.max_seq_len = seq_len

  config.optim = ml_collections.ConfigDict(dict(
      name="muon" if args.muon else "adamw",  # adamw | muon
      learning_rate=1e-4 if args.stage2 else 3e-3,  # peak
      warmup_steps=10,
      decay_steps=num_steps,  # cosine over the whole run
      final_lr_ratio=0.1,
      weight_decay=0.01,  # matmul weights and embeddings
      b1=0.9, b2=0.95, eps=1e-8,
      grad_clip_norm=1.0,  # global norm; 0 = off
      muon_beta=0.95,
      muon_adam_lr_ratio=1.0,
  ))
  config.train = ml_collections.ConfigDict(dict(
      num_steps=num_steps,
      batch_size=batch_size,  # global rows per step
      num_microbatches=1,  # gradient accumulation
      seed=0,
      log_every=10,  # steps
      eval_every=0,  # steps; 0 = at the end only
      eval_problems=2,  # held-out problems per domain and difficulty (greedy accuracy)
      max_new_tokens=448,  # generation budget per held-out problem
      max_bad_steps=10,  # consecutive non-finite steps before stopping
      loss_impl="xla",  # fused cross-entropy: xla | pallas | reference
      z_loss=0.0,
      init_from="",  # "" = fresh init; a stage-1 workdir for stage 2
  ))
  config.ckpt = ml_collections.ConfigDict(dict(
      every=100,  # steps
      keep=3,
      async_save=True,
  ))
  if args.quickstart:
    config.data.toy.update(dict(ladder="small", min_steps=1, max_steps=4, problems=2000,
                                heldout_per_difficulty=100))
    # Whole words and numbers as tokens (data.tokenizer=toy, 1,017 ids): with bytes this model
    # copies no number from the prompt after 200-800 steps (greedy accuracy 0.02-0.06, the
    # same as guessing); with number tokens it solves most one-step problems by step 750.
    config.data.tokenizer = "toy"
    # Narrower attention than the smoke model's 20 x 32 (which costs 2.5x the MLP and logits per
    # token at 384-token rows): 2 GDA groups of 4 signal + 1 noise heads of width 16, and a wider
    # MLP (512); about half the FLOPs per token.
    config.model.update(dict(num_heads=10, num_kv_heads=4, head_dim=16, d_ff=512,
                             vocab_size=1024))
    seq_len.set(384)
    # More, smaller steps: at an equal token count 8 x 384 rows learn faster than 16 x 384.
    batch_size.set(8)
    num_steps.set(args.steps or 750)
    # 100 held-out problems per tier; 128 tokens hold the longest answer (111).
    config.train.update(dict(log_every=10, eval_problems=100, max_new_tokens=128))
    config.ckpt.every = 250
  if args.smoke:
    config.data.toy.update(dict(problems=40, reference_size=20, heldout_per_difficulty=2,
                                ladder="small", min_steps=1, max_steps=4))
    batch_size.set(4)
    seq_len.set(256)
    num_steps.set(args.steps or 4)
    config.train.update(dict(log_every=1, eval_problems=1, max_new_tokens=8))
    config.ckpt.every = 2
  return config
