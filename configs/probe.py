"""Teacher probe: rank candidate trace sets by how well they fit a student, before scaling them.

  python -m experiments.probe_teachers --config=configs/probe.py:smoke --workdir=/tmp/probe_smoke
  python -m experiments.probe_teachers --config=configs/probe.py --workdir=/tmp/probe \
      --config.student=/tmp/my_model --config.candidates=a.jsonl,b.jsonl,c.jsonl \
      --config.eval_data=heldout.jsonl --config.data.reference=target_sample.jsonl

For every candidate (the same prompts answered by one teacher; JSONL/Parquet in any record format
of `data.format`): (a) the student's mean per-token NLL on the traces, (b) the mean style distance
(max |z| against the reference profile, as the style filter measures it), (c) the verification
pass rate, (d) a short SFT from the student on exactly `probe.token_budget` completion tokens of
the candidate, evaluated (pass@1, pass@k by difficulty) on `eval_data`. The workdir receives
probe.json, probe.md, *_vs_probe.png and candidates/<name>/ (result.json, samples.jsonl); a
rerun skips finished candidates.

`student=toy` first trains the toy target model (student_sft: SFT on the toy target sample, the
reference outputs the style profile is measured on; never on a candidate's traces) into
WORKDIR/student; `candidates=toy` writes the three toy teachers (aligned, verbose: partly
aligned, misaligned) to WORKDIR/candidates/*.jsonl.

Your own model: `base=DIR` (an `experiments.convert --from_hf` workdir) makes it the student and
tokenizes and renders with its tokenizer and chat template (data.template.kind=hf):

  python -m experiments.probe_teachers --config=configs/probe.py:base=/tmp/own/base \
      --workdir=/tmp/own/probe --config.candidates=a.jsonl,b.jsonl,c.jsonl \
      --config.eval_data=/tmp/own/test.jsonl --config.data.reference=/tmp/own/own_outputs.jsonl

Default (toy, `small` ladder, 2-layer model, toy-word tokenizer): 917-930 CPU-seconds per run
(seeds 0-2), smoke 90 s wall on 2 idle cores (README, Teacher probe).

Variants: smoke, seed=N (toy corpus, student, probe SFT and sampling seeds), base=DIR.
"""

import ml_collections

from configs import common
from configs import sft as sft_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, smoke=False, seed=0, base="")
  config = ml_collections.ConfigDict()
  config.student = "toy"  # params dir | run workdir (its final/) | toy (train the toy target)
  config.candidates = "toy"  # comma-separated files, one per teacher (name = file stem) | toy
  config.eval_data = "toy"  # toy (data.toy held-out problems) | JSONL/Parquet prompt records
  config.mesh = common.mesh()
  toy = dict(seed=args.seed, ladder="small", min_steps=1, max_steps=4, problems=400,
             reference_size=200, heldout_per_difficulty=8, duplicate_rate=0.0)
  # Tokenizer, template, trace split, verify methods, style min_std and the reference sample.
  config.data = common.data(seq_len=384)  # seq_len: tokens of a trace the NLL scorer sees
  config.data.toy.update(toy)
  config.nll_batch_size = 16  # traces per NLL forward pass
  config.probe = ml_collections.ConfigDict(dict(
      token_budget=0,  # completion tokens each candidate trains on per epoch; 0 = the smallest
      # candidate's total (counted after cutting traces at seq_len)
      epochs=3,  # passes over each candidate's budget (rows reshuffled every pass)
      seq_len=384,  # tokens per packed row
      batch_size=8,  # rows per step
      seed=args.seed,  # record order (the same prompts first for every candidate), row shuffle
      loss_impl="xla",
      eval_student=True,  # also evaluate the student itself (the baseline row of the report)
      # the probe score ranked first (ties: pass@1, pass@k, mean reward): pass@1 | mean_reward
      # (pass@1 + 0.1 x well-formed share) | format_ok (share of samples with a closed think
      # block and an answer within eval.max_new_tokens)
      rank_by="mean_reward",
  ))
  config.optim = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=3e-4, warmup_steps=5,
      decay_steps=1000,  # unused while final_lr_ratio = 1 (constant after warmup: no candidate's
      final_lr_ratio=1.0,  # step count moves its schedule, and one compiled step serves all)
      weight_decay=0.01, b1=0.9, b2=0.95, eps=1e-8, grad_clip_norm=1.0, muon_beta=0.95,
      muon_adam_lr_ratio=1.0,
  ))
  config.eval = ml_collections.ConfigDict(dict(
      num_samples=4,  # completions per held-out prompt (n of pass@k)
      max_new_tokens=256,  # completion budget: verbose teachers pay for their words here too
      temperature=0.6, top_p=1.0, top_k=0,
      ks="1,4",  # pass@k reported; ranking: pass@1, then the largest k, then mean reward
      prompt_batch=32,  # prompts per sampler call
      seed=args.seed,
      draft_tokens=0,  # n-gram speculative decoding (configs/evaluate.py); 0 = off
  ))
  config.rewards = ml_collections.ConfigDict(dict(
      terms=dict(arith="exact,format:0.1", lists="exact,format:0.1", code="code,format:0.1",
                 math="math,format:0.1"),
      default_terms="exact,format:0.1",
      overlong_window=16, verifier_timeout_s=10.0, code_timeout_s=5.0, code_memory_mb=512,
      code_allow_weak_isolation=False, max_workers=2,
  ))
  # student=toy: configs/sft.py's 2-layer model trained on the toy target sample.
  student = sft_config.get_config("quickstart,steps=300")
  student.data.toy.update(toy)
  student.data.update(dict(seq_len=384, global_batch_size=16, filter_on_load=False))
  student.train.update(dict(eval_problems=0, log_every=25, seed=args.seed))
  student.ckpt.every = 100
  config.student_sft = student
  config.data.tokenizer = student.data.tokenizer  # the toy student's words (checked at run time)
  if args.base:  # an experiments.convert --from_hf workdir: its tokenizer and chat template
    config.student = args.base
    config.data.tokenizer = f"{args.base}/tokenizer.json"
    config.data.template.kind = "hf"
    config.data.template.path = args.base
  if args.smoke:
    small = dict(problems=120, reference_size=60, heldout_per_difficulty=3)
    config.data.toy.update(small)
    config.data.seq_len = 256
    student.data.toy.update(small)
    student.data.update(dict(seq_len=256, global_batch_size=8))
    student.train.num_steps = 250
    # A one-minute student solves next to nothing (its pass@1 is a lucky sample or two), so the
    # smoke ranks by what the probe SFT does to its well-formed answers.
    config.probe.update(dict(epochs=2, token_budget=4000, seq_len=256, rank_by="format_ok"))
    config.eval.update(dict(num_samples=4, ks="1,4"))
  return config
