"""The recipe's lessons at small scale (recipe §7): the study and every run it launches.

  python -m experiments.reproduce --workdir=/tmp/repro                         # full, ~60 min
  python -m experiments.reproduce --workdir=/tmp/repro_smoke --config=configs/reproduce.py:smoke

`run=study` (default) is the study: seeds, parts, token budgets, margins. The study launches its
runs through the sweep launcher on bases of this same file: `run=sft` (experiments.sft on the
quickstart ladder: the 2-layer tiny Motif model, small-number toy problems of difficulty 1-4),
`run=rl` (experiments.rl from an SFT run of the study), `run=memory` (motif_jax.reproduce.memory,
kernel and step memory at the Motif shapes), `run=probe` (the teacher probe, configs/probe.py, via
motif_jax.reproduce.probe_task). Each point's overrides (data, filters, seed, steps) are listed in
DIR/<phase>/sweep_points.py.

Full: 2 SFT seeds x 5 data conditions + 2 two-stage curricula at 720,000 completion tokens each
(322-396 steps of 8 x 384 rows in toy words, about half the quickstart's 750 steps: what an hour
of 2 cores buys), 2 RL seeds x 4 conditions x 10 rollout batches, 1 probe run, memory at the
Motif shapes. Smoke: 1 seed, 2,500 tokens per SFT run, 2 RL batches.

Variants: smoke (seconds per run: the smoke model, a few steps; ~3 min on 2 cores),
run=study|sft|rl|memory|probe.
"""

import ml_collections

from configs import common, rl, sft

FULL_FILTERS = "format,verify,verbosity,granularity,style,dedup"


def study_section(smoke: bool) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      variant="smoke" if smoke else "",  # what run=... bases add (configs/reproduce.py:VARIANT)
      parts="data,curriculum,probe,rl,memory",  # which parts to run (report sections follow)
      seeds=1 if smoke else 2,  # SFT seeds (train.seed = data.seed = s); smoke: time, not stats
      rl_seeds=1 if smoke else 2,
      probe_seeds=1,  # teacher-probe runs (each probes all three toy teachers)
      # points at once on the local launcher (full: 1, one SFT run already keeps both cores of a
      # 2-core box busy; smoke: 2, its seconds-long runs are mostly start-up); > 1 also runs the
      # probe and memory parts beside the SFT runs
      parallel=2 if smoke else 1,
      confidence=0.95,  # of every interval
      # Completion (loss) tokens per SFT run: each condition trains the steps that its own data
      # pipeline needs to reach this count (counted before launch, checked from metrics after).
      sft_budget_tokens=2_500 if smoke else 720_000,
      max_steps=50 if smoke else 2_000,  # a budget that needs more steps is an error
      accuracy_margin=0.02,  # pass@1 differences smaller than this count as no effect
      entropy_margin=0.01,  # nats per token
      curriculum=dict(
          stage1_share=0.5,  # of the budget, on short traces in short rows
          stage1_seq_len=208,  # tokens per row in stage 1 (full rows: 384; smoke 256)
          stage1_max_tokens=80,  # longest response (tokens) in stage 1: about 2/3 of the traces
      ),
      memory_kernel_json="docs/bench_kernels_cpu.json" if smoke else "",  # "" = measure now
  ))


def sft_run(smoke: bool) -> ml_collections.ConfigDict:
  """experiments.sft on the quickstart ladder; every step logged (tokens are counted)."""
  config = sft.get_config("smoke" if smoke else "quickstart")
  config.train.log_every = 1  # the study sums train/tokens over every step
  config.data.filters.order = FULL_FILTERS
  if smoke:
    config.train.update(dict(eval_problems=2, max_new_tokens=16))
  else:
    # 25 held-out problems per domain and tier (200 in all): pass@1 in steps of 0.005.
    config.train.update(dict(eval_problems=25, max_new_tokens=128))
    config.ckpt.every = 100
  return config


def rl_run(smoke: bool) -> ml_collections.ConfigDict:
  """experiments.rl on the same model and ladder as sft_run; held-out accuracy every few steps."""
  config = rl.get_config("smoke" if smoke else "quickstart")
  config.data = sft_run(smoke).data
  config.model = sft_run(smoke).model
  if smoke:
    config.train.update(dict(num_steps=2, eval_every=1, eval_problems=1))
  else:  # 10 rollout batches of 8 prompts x 8 samples; held-out pass@1 on 40 problems every 5
    # (the study's settings, fixed here: the quickstart's RL has since moved to fresh problems,
    # 32 per batch, LR 1e-4, for its hybrid SFT set)
    config.train.update(dict(num_steps=10, eval_every=5, eval_problems=5, prompts="toy",
                             prompts_per_batch=8, rows=32))
    config.optim.learning_rate = 3e-5
  return config


def memory_run(smoke: bool) -> ml_collections.ConfigDict:
  """motif_jax.reproduce.memory: the fused paths against the naive ones, AOT (nothing allocated)."""
  config = ml_collections.ConfigDict()
  config.memory = ml_collections.ConfigDict(dict(
      kernel_json=study_section(smoke).memory_kernel_json,  # "" = compile the kernels now
      # Planner cells: the model config, mesh, tokens per sequence, remat; both loss paths.
      plan_config="configs/tiny.py:smoke" if smoke else "configs/motif2_12b.py",
      plan_mesh=f"data=1,fsdp=1,tensor=1,sequence={1 if smoke else 8}",
      plan_seq_len=256 if smoke else 65_536,
      plan_remat="none" if smoke else "full",
      plan_loss_impls="xla,reference",  # fused chunked loss vs full [tokens, vocab] logits
  ))
  return config


def probe_run(smoke: bool) -> ml_collections.ConfigDict:
  """experiments.probe_teachers on the three toy teachers (configs/probe.py)."""
  from configs import probe  # noqa: PLC0415 (the probe, issue 19, may be absent)
  config = probe.get_config("smoke" if smoke else None)
  if smoke:  # seconds, not minutes: a barely trained student, one short epoch per teacher
    config.student_sft.train.num_steps = 10
    config.student_sft.optim.decay_steps = 10
    config.data.toy.heldout_per_difficulty = 1
    config.probe.update(dict(epochs=1, token_budget=1000))
    config.eval.update(dict(num_samples=2, ks="1,2", max_new_tokens=32))
  else:  # half the probe's default student training and samples: it runs beside the SFT runs
    config.student_sft.train.num_steps = 150
    config.student_sft.optim.decay_steps = 150
    config.probe.epochs = 2
    config.eval.num_samples = 2
    config.eval.ks = "1,2"
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, smoke=False, run="study")
  runs = {"sft": sft_run, "rl": rl_run, "memory": memory_run, "probe": probe_run}
  if args.run == "study":
    config = ml_collections.ConfigDict()
    config.study = study_section(args.smoke)
    return config
  if args.run not in runs:
    raise ValueError(f"run={args.run!r} must be one of study, {', '.join(runs)}")
  return runs[args.run](args.smoke)
