"""RL after SFT (recipe §5): DAPO-style objective, pass-rate band, replay, multi-task balancing.

  python -m experiments.rl --config=configs/rl.py:quickstart --workdir=/tmp/rl \
      --config.rl.init_from=/tmp/sft

The `rl` section is the typed `motif_jax.rl.config.RLConfig`; its defaults are recipe §5.1's
inferred design (none are from the paper): GRPO groups of 8, advantage r - mean(group) over std,
clip-higher eps_low 0.2 / eps_high 0.28, token-level DAPO normalization, no KL, no entropy
bonus, band [0.1, 0.9], TIS cap 2, half of each batch replayed from up to 2 policy versions back.

Variants: default (tiny model), smoke (seconds on CPU, tests), quickstart (what
`make quickstart` runs after SFT), motif (Motif-2-12.7B, configs/motif2_12b.py, for GPU hosts),
steps=N.
"""

import ml_collections

from configs import common, motif2_12b, sft


def rl_section() -> ml_collections.ConfigDict:
  """Every RLConfig field with its default (recipe §5.1)."""
  return ml_collections.ConfigDict(dict(
      group_size=8,  # samples per prompt (GRPO group)
      advantage="grpo",  # grpo: (r - group mean) / std | mean: r - group mean (Dr.GRPO)
      advantage_scale="group",  # grpo std over: group | domain (the trajectory's domain)
      # Scale of negative advantages: 1 = the plain objective; 0 = reinforce correct samples
      # only (PSR, Zhu et al. 2025; RAFT-like), which sharpens pass@1 at some cost in pass@k
      negative_weight=1.0,
      eps_low=0.2,  # PPO ratio floor 1 - eps_low
      eps_high=0.28,  # ratio ceiling 1 + eps_high (clip-higher: > eps_low)
      dual_clip=0.0,  # 0 = off; c > 1 caps negative-advantage losses at -c A (e.g. 3)
      loss_level="token",  # token: / global completion tokens (DAPO) | sequence: / sequences
      ratio_level="token",  # token (PPO/DAPO) | sequence (GSPO: geometric mean of token ratios)
      kl_coef=0.0,  # k3 KL to the frozen reference policy; 0 = off (no reference needed)
      entropy_coef=0.0,  # entropy bonus; 0 = off
      # SFT term on data.inputs during RL (InstructGPT's PPO-ptx): loss = RL loss + sft_coef x
      # mean NLL of train.sft_rows packed SFT rows per update; 0 = off (no SFT data read)
      sft_coef=0.0,
      tis_cap=2.0,  # truncated importance weight cap on π_old/μ; 0 = off
      old_policy="recompute",  # π_old: recompute (trainer log-probs, TIS on μ) | behaviour (μ)
      temperature=1.0,  # sampling temperature; log-probs are taken at it
      updates_per_rollout=1,  # optimizer steps per rollout batch (PPO epochs)
      pass_rate_low=0.1,  # band: prompts kept while their pass-rate EMA is in [low, high]
      pass_rate_high=0.9,
      pass_rate_ema=0.5,  # weight of the newest estimate in the per-prompt EMA
      offline_samples=8,  # samples per prompt for the offline pass-rate estimate before RL
      offline_prompts=0,  # prompts per domain measured by the offline pass; 0 = no offline pass
      online_filter=True,  # drop groups whose rewards are all equal; refill from the queue
      replay_fraction=0.5,  # share of each batch's trajectories drawn from the replay buffer
      max_staleness=2,  # policy versions a replayed trajectory may lag; older ones dropped
      replay_capacity=4096,  # trajectories kept (oldest evicted first)
      domains="arith,lists",  # comma-separated; domain ids index this list
      balance="fixed",  # fixed | reward (upweight low mean reward) | learnable (in-band share)
      domain_weights="",  # fixed weights, comma-separated per domain; "" = equal
      balance_floor=0.1,  # adaptive: every domain keeps at least this share
      init_from="",  # SFT workdir (its final/) or params dir; "" = random init (tests, benches)
  ))


def rewards_section() -> ml_collections.ConfigDict:
  """motif_jax.rl.rewards.RewardConfig; code runs in the sandbox with common.sandbox()'s limits."""
  sandbox = common.sandbox()
  return ml_collections.ConfigDict(dict(
      terms=dict(  # domain -> "reward:weight,...": the first verifier term decides "passed"
          arith="exact,format:0.1",
          lists="exact,format:0.1",
          code="code,format:0.1",
          math="math,format:0.1,overlong:0.5",
      ),
      default_terms="exact,format:0.1",  # other domains; "" = an error
      overlong_window=128,  # tokens before the budget where the overlong penalty ramps to -1
      verifier_timeout_s=10.0,  # math-verify per answer (the worker is killed after it)
      code_timeout_s=sandbox.timeout_s,  # sandbox deadline per program
      code_memory_mb=sandbox.memory_mb,  # sandbox address-space limit
      # no namespaces on this machine: run generated code with rlimits only instead of refusing
      code_allow_weak_isolation=sandbox.allow_weak_isolation,
      max_workers=4,  # concurrent slow verifications
  ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, smoke=False, quickstart=False, motif=False, steps=0)
  config = ml_collections.ConfigDict()
  # Model and toy ladder of the SFT run RL starts from (same variant): init_from must match it.
  sft_variant = "smoke" if args.smoke else "quickstart" if args.quickstart else (
      "motif" if args.motif else "stage1")
  sft_config = sft.get_config(sft_variant)
  config.model = sft_config.model
  config.data = sft_config.data  # tokenizer, template, toy ladder (prompts and held-out set)
  config.mesh = motif2_12b.get_config().mesh if args.motif else common.mesh()
  num_steps = ml_collections.FieldReference(args.steps or 200)
  config.rl = rl_section()
  config.rewards = rewards_section()
  config.optim = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-6 if args.motif else 1e-4,  # peak
      warmup_steps=5, decay_steps=num_steps, final_lr_ratio=1.0,  # constant after warmup
      weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0,
      muon_beta=0.95, muon_adam_lr_ratio=1.0))
  config.train = ml_collections.ConfigDict(dict(
      num_steps=num_steps,  # rollout batches
      prompts_per_batch=16,  # prompts per rollout batch (x rl.group_size trajectories)
      # Update batch: first-fit packed rows. rows x (seq_len // (longest prompt + max_new_tokens))
      # >= prompts_per_batch x group_size holds any batch (else a start-up warning; what does not
      # fit is left out, pack/dropped). One worst-case trajectory per row: attention is
      # quadratic in the row.
      rows=128,
      sft_rows=0,  # rl.sft_coef > 0: packed SFT rows (data.inputs) added to each update batch
      seq_len=768,  # tokens per row (RL and SFT rows)
      max_new_tokens=448,  # completion budget
      max_refills=4,  # extra sampler calls per batch when the online filter drops groups
      prompts="toy",  # toy = data.toy's training problems | toy_fresh = new problems of that
      # ladder, none held out | JSONL/Parquet prompt records with prompt, domain and answer
      # (math, toy) or tests (code)
      num_microbatches=1,
      seed=0,
      log_every=1,  # rollout batches
      eval_every=0,  # rollout batches; 0 = at the end only
      eval_problems=2,  # held-out problems per domain and difficulty (greedy accuracy); 0 = off
      eval_max_new_tokens=448,
      max_bad_steps=10,  # consecutive non-finite steps before stopping
      loss_impl="xla",  # fused log-prob kernel: xla | pallas | reference
  ))
  config.ckpt = ml_collections.ConfigDict(dict(every=50, keep=3, async_save=True))
  if args.motif:
    config.rl.domains = "math,code"
    # 2 trajectories per 64K row: prompts up to 2,048 tokens + 30,720 completion tokens.
    config.train.update(dict(prompts_per_batch=256, rows=1024, seq_len=65536,
                             max_new_tokens=30720, eval_max_new_tokens=30720,
                             prompts="", eval_problems=0, num_microbatches=16,
                             loss_impl="pallas"))  # prompts: pass your math/code records
  if args.quickstart:
    # In toy word tokens the ladder's answers fit 128 tokens (the longest: 111) and its prompts
    # 64 (57), so two trajectories always fit a 384-token row. 25 batches of 32 new problems
    # (toy_fresh: none seen in SFT or held out) x 8 at LR 1e-4: from the quickstart's hybrid SFT
    # set (20% answered without working) RL learns to work the steps, sampled pass@1 up and
    # greedy accuracy unchanged; on all-worked SFT data the same run moves nothing, and 3e-4
    # breaks arithmetic facts (README, RL).
    config.train.update(dict(prompts="toy_fresh", prompts_per_batch=32, rows=64, seq_len=384,
                             max_new_tokens=128, eval_problems=100, eval_max_new_tokens=128,
                             log_every=1))
    config.optim.learning_rate = 1e-4
    num_steps.set(args.steps or 25)
    config.ckpt.every = 10
  if args.smoke:
    config.rl.update(dict(group_size=4, replay_capacity=64, offline_samples=4,
                          offline_prompts=1))
    # One trajectory per 256-token row: attention cost grows with the row length on CPU.
    config.train.update(dict(prompts_per_batch=2, rows=8, seq_len=256, max_new_tokens=8,
                             eval_problems=1, eval_max_new_tokens=8, max_refills=1))
    num_steps.set(args.steps or 2)
    config.ckpt.every = 1
  return config
