"""Evaluate a checkpoint: n samples per prompt, verifiable rewards, pass@k / maj@n by domain and
difficulty (motif_jax/evaluation.py, motif_jax/eval_run.py).

  python -m experiments.evaluate --config=configs/evaluate.py --workdir=/tmp/eval \
      --config.checkpoint=/tmp/sft1
  python -m experiments.evaluate --config=configs/evaluate.py:smoke --workdir=/tmp/eval_smoke \
      --config.checkpoint=/tmp/sft_smoke
  python -m experiments.evaluate --config=configs/evaluate.py:quickstart,greedy \
      --workdir=/tmp/eval_qs --config.checkpoint=/tmp/motif_quickstart/rl
  python -m experiments.evaluate --config=configs/evaluate.py --workdir=/tmp/eval_math \
      --config.checkpoint=/tmp/imported --config.data=math_prompts.jsonl \
      --config.tokenizer=/models/x/tokenizer.json

`checkpoint` is a params directory (model_config.json + params/, as experiments.convert writes)
or a run workdir holding one in final/ (experiments.sft). `data` is `toy` (the toy held-out
problems, `toy` section) or JSONL/Parquet prompt records with an `answer` or `tests` (no
response needed) in any record format: chat `messages` ending in the user's turn, `prompt`, or
other fields through `fields` (`--config.fields.prompt=problem`); `format`, `fields`,
`default_domain` and `default_source` mean what data.* means in configs/sft.py. The workdir
receives eval.json (with each prompt file's parse counts under "inputs"), eval.md,
samples.jsonl, accuracy_by_difficulty.png and response_lengths.png; a rerun resumes (prompts
already in samples.jsonl are not sampled again).

Variants: smoke (6 toy prompts x 2 samples of 16 tokens: seconds on CPU), greedy (1 sample at
temperature 0: pass@1 = greedy accuracy), quickstart (a `make quickstart` model: the toy word
tokenizer, its held-out problems and answer budget).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, smoke=False, greedy=False, quickstart=False)
  config = ml_collections.ConfigDict()
  config.checkpoint = ""  # params directory or run workdir (its final/); required
  config.data = "toy"  # toy | comma-separated JSONL/Parquet paths or globs
  config.max_prompts = 0  # evaluate the first N prompts only; 0 = all
  data = common.data()
  # How data files are read: as data.* in configs/sft.py (motif_jax/data/formats.py), as prompt
  # sets (no response needed); format=auto|record|messages|prompt_completion
  config.format = data.format
  config.fields = data.fields
  config.default_domain = data.default_domain  # "" = the file name's stem
  config.default_source = data.default_source
  config.toy = data.toy  # the held-out problems when data=toy
  config.toy.domains = "arith,lists,code"
  # "" = byte-level; toy = the toy word tokenizer (quickstart models, configs/sft.py:quickstart);
  # else a Hugging Face tokenizer.json (imported models)
  config.tokenizer = ""
  config.template = data.template  # chat template (prompt ends with assistant tag + <think>)
  config.mesh = common.mesh()  # params sharded as the trainer shards them; rows over batch axes
  config.eval = ml_collections.ConfigDict(dict(
      num_samples=8,  # completions per prompt (n of pass@k, maj@n)
      max_new_tokens=512,  # completion budget, tokens
      temperature=1.0,  # 0 = greedy
      top_p=1.0,
      top_k=0,  # 0 = off
      ks="1,4,8",  # pass@k reported; each <= num_samples
      prompt_batch=16,  # prompts per sampler call (and per samples.jsonl flush)
      seed=0,
      # n-gram speculative decoding: tokens drafted per decode step from each row's own text and
      # verified in the same pass (same distribution; pays off at small batches): 0 = off
      draft_tokens=0,
  ))
  config.rewards = ml_collections.ConfigDict(dict(
      terms=dict(  # domain -> "reward:weight,...": the first verifier term decides correctness
          arith="exact,format:0.1",
          lists="exact,format:0.1",
          code="code,format:0.1",
          math="math,format:0.1,overlong:0.5",
      ),
      default_terms="exact,format:0.1",  # other domains; "" = an error
      overlong_window=128,  # tokens before the budget where the overlong penalty ramps to -1
      verifier_timeout_s=10.0,  # math-verify per answer (the worker is killed after it)
      code_timeout_s=5.0,  # sandbox deadline per program
      code_memory_mb=512,  # sandbox address-space limit
      code_allow_weak_isolation=False,  # True: without namespaces, run code with rlimits only
      max_workers=4,  # concurrent slow verifications
  ))
  if args.smoke:
    config.toy.update(dict(max_steps=3, heldout_per_difficulty=1))  # 3 domains x 2 = 6 prompts
    config.eval.update(dict(num_samples=2, max_new_tokens=16, ks="1,2", prompt_batch=8))
    config.rewards.overlong_window = 4
  if args.greedy:
    config.eval.update(dict(num_samples=1, temperature=0.0, ks="1"))
  if args.quickstart:  # a quickstart model: its tokenizer, held-out set and answer budget
    from configs import sft  # noqa: PLC0415
    quick = sft.get_config("quickstart")
    config.tokenizer = quick.data.tokenizer
    config.toy = quick.data.toy
    config.eval.max_new_tokens = quick.train.max_new_tokens
  return config
