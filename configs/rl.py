"""RL after SFT (recipe §5): DAPO-style objective, pass-rate band, replay, multi-task balancing.

  python -m experiments.rl --config=configs/rl.py:quickstart --workdir=/tmp/rl \
      --config.rl.init_from=/tmp/sft   (the entry point comes with issue 18's experiment part)

The `rl` section is the typed `motif_jax.rl.config.RLConfig`; its defaults are recipe §5.1's
inferred design (none are from the paper): GRPO groups of 8, advantage r - mean(group) over std,
clip-higher eps_low 0.2 / eps_high 0.28, token-level DAPO normalization, no KL, no entropy
bonus, band [0.1, 0.9], TIS cap 2, half of each batch replayed from up to 2 policy versions back.

Variants: default (tiny model), smoke (seconds on CPU, tests), quickstart (what
`make quickstart` runs after SFT), motif (Motif-2-12.7B, configs/motif2_12b.py, for GPU hosts),
steps=N.
"""

import ml_collections

from configs import common, motif2_12b, tiny


def rl_section() -> ml_collections.ConfigDict:
  """Every RLConfig field with its default (recipe §5.1)."""
  return ml_collections.ConfigDict(dict(
      group_size=8,  # samples per prompt (GRPO group)
      advantage="grpo",  # grpo: (r - group mean) / std | mean: r - group mean (Dr.GRPO)
      advantage_scale="group",  # grpo std over: group | domain (the trajectory's domain)
      eps_low=0.2,  # PPO ratio floor 1 - eps_low
      eps_high=0.28,  # ratio ceiling 1 + eps_high (clip-higher: > eps_low)
      dual_clip=0.0,  # 0 = off; c > 1 caps negative-advantage losses at -c A (e.g. 3)
      loss_level="token",  # token: / global completion tokens (DAPO) | sequence: / sequences
      ratio_level="token",  # token (PPO/DAPO) | sequence (GSPO: geometric mean of token ratios)
      kl_coef=0.0,  # k3 KL to the frozen reference policy; 0 = off (no reference needed)
      entropy_coef=0.0,  # entropy bonus; 0 = off
      tis_cap=2.0,  # truncated importance weight cap on π_old/μ; 0 = off
      old_policy="recompute",  # π_old: recompute (trainer log-probs, TIS on μ) | behaviour (μ)
      temperature=1.0,  # sampling temperature; log-probs are taken at it
      updates_per_rollout=1,  # optimizer steps per rollout batch (PPO epochs)
      pass_rate_low=0.1,  # band: prompts kept while their pass-rate EMA is in [low, high]
      pass_rate_high=0.9,
      pass_rate_ema=0.5,  # weight of the newest estimate in the per-prompt EMA
      offline_samples=8,  # samples per prompt for the offline pass-rate estimate before RL
      online_filter=True,  # drop groups whose rewards are all equal; refill from the queue
      replay_fraction=0.5,  # share of each batch's trajectories drawn from the replay buffer
      max_staleness=2,  # policy versions a replayed trajectory may lag; older ones dropped
      replay_capacity=4096,  # trajectories kept (oldest evicted first)
      domains="arith,lists",  # comma-separated; domain ids index this list
      balance="fixed",  # fixed | reward (upweight low mean reward) | learnable (in-band share)
      domain_weights="",  # fixed weights, comma-separated per domain; "" = equal
      balance_floor=0.1,  # adaptive: every domain keeps at least this share
  ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, smoke=False, quickstart=False, motif=False, steps=0)
  config = ml_collections.ConfigDict()
  small = args.smoke or args.quickstart
  config.model = (motif2_12b if args.motif else tiny).get_config("smoke" if small else None).model
  config.mesh = motif2_12b.get_config().mesh if args.motif else common.mesh()
  num_steps = ml_collections.FieldReference(args.steps or 200)
  config.rl = rl_section()
  config.optim = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-6 if args.motif else 1e-4,  # peak
      warmup_steps=5, decay_steps=num_steps, final_lr_ratio=1.0,  # constant after warmup
      weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0,
      muon_beta=0.95, muon_adam_lr_ratio=1.0))
  config.train = ml_collections.ConfigDict(dict(
      num_steps=num_steps,  # rollout batches
      prompts_per_batch=32,  # prompts per rollout batch (x rl.group_size trajectories)
      num_microbatches=1,
      seed=0,
      loss_impl="xla",  # fused log-prob kernel: xla | pallas | reference
  ))
  config.ckpt = ml_collections.ConfigDict(dict(every=50, keep=3, async_save=True))
  if args.motif:
    config.rl.domains = "math,code"
    config.train.update(dict(prompts_per_batch=256, num_microbatches=16, loss_impl="pallas"))
  if args.quickstart:
    config.train.prompts_per_batch = 16
    num_steps.set(args.steps or 40)
  if args.smoke:
    config.rl.update(dict(group_size=4, replay_capacity=64))
    config.train.prompts_per_batch = 2
    num_steps.set(args.steps or 2)
    config.ckpt.every = 1
  return config
