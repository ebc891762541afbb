"""GPU check, part 4: sampler throughput through `motif_jax.sampling.sample`, RL-shaped.

P prompts x n samples each (rows share their prompt's prefill), random weights and no stop ids,
so every row decodes its whole budget: generated tokens/s = rows x max_new_tokens over the
median wall time of a call (one warm-up call compiles). Models: configs/tiny.py (float32) and
the ~1B Motif model of gpu_step (bf16); the dry run samples from tiny:smoke only.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import time

import jax
import numpy as np

from configs import common, tiny
from motif_jax.bench import gpu_measure as gm
from motif_jax.bench import gpu_step
from motif_jax.bench.gpu_harness import PartContext, Skipped
from motif_jax.model import ModelConfig, init_params

environment = gm.environment


def sampling_module():
  if importlib.util.find_spec("motif_jax.sampling") is None:
    raise Skipped("sampling module missing")
  module = importlib.import_module("motif_jax.sampling")
  if not hasattr(module, "sample"):
    raise Skipped("motif_jax.sampling has no sample()")
  return module


def bench_sampler(model: ModelConfig, *, prompts: int, samples: int, prompt_len: int,
                  max_new_tokens: int, repeats: int) -> dict:
  sample = sampling_module().sample
  params = init_params(jax.random.key(0), model)
  rng = np.random.default_rng(0)
  prompt_ids = [rng.integers(0, model.vocab_size, prompt_len).tolist() for _ in range(prompts)]
  run = functools.partial(sample, params, prompt_ids, model, num_samples=samples,
                          max_new_tokens=max_new_tokens, temperature=1.0)
  run(key=jax.random.key(0))  # compile
  times, generated = [], []
  for i in range(repeats):
    start = time.perf_counter()
    rollouts = run(key=jax.random.key(i + 1))
    times.append(time.perf_counter() - start)
    generated.append(int(np.sum(rollouts.lengths)))
  seconds = float(np.median(times))
  return {"kind": "sampler", "rows": prompts * samples, "prompts": prompts, "samples": samples,
          "prompt_len": prompt_len, "max_new_tokens": max_new_tokens,
          "median_s": seconds, "min_s": min(times), "max_s": max(times),
          "generated_tokens": int(np.median(generated)),
          "tokens_per_s": float(np.median(generated)) / seconds,
          "logprobs_finite": bool(np.isfinite(rollouts.logprobs).all())}


def bench_drafts(model: ModelConfig, *, batch: int, prompt_len: int, max_new_tokens: int,
                 repeats: int, draft_tokens: int = 3) -> dict:
  """Greedy decoding at a small batch, one token per step vs n-gram speculative decoding
  (`draft_tokens`), alternated: where a step is bound by reading the weights, drafts are close to
  free (on CPU they are not: README, Sampling)."""
  sample = sampling_module().sample
  params = init_params(jax.random.key(0), model)
  rng = np.random.default_rng(1)
  prompt_ids = rng.integers(2, model.vocab_size, (batch, prompt_len)).tolist()
  runs = {k: functools.partial(sample, params, prompt_ids, model, max_new_tokens=max_new_tokens,
                               temperature=0.0, key=jax.random.key(0), draft_tokens=k)
          for k in (0, draft_tokens)}
  outs = {k: run() for k, run in runs.items()}  # compile
  times = {k: [] for k in runs}
  for _ in range(repeats):
    for k, run in runs.items():
      start = time.perf_counter()
      run()
      times[k].append(time.perf_counter() - start)
  generated = int(np.sum(outs[0].lengths))
  result = {"kind": "sampler_drafts", "batch": batch, "prompt_len": prompt_len,
            "max_new_tokens": max_new_tokens, "generated_tokens": generated,
            "same_tokens": bool((outs[0].tokens == outs[draft_tokens].tokens).all())}
  for k, ts in times.items():
    result[f"draft_tokens={k}"] = {"median_s": float(np.median(ts)), "min_s": min(ts),
                                   "tokens_per_s": generated / float(np.median(ts)),
                                   "decode_steps": outs[k].decode_steps,
                                   "accepted_drafts": outs[k].accepted_drafts}
  plain, drafted = result["draft_tokens=0"], result[f"draft_tokens={draft_tokens}"]
  result["summary"] = (f"{plain['tokens_per_s']:.0f} tok/s; with {draft_tokens} drafts "
                       f"{drafted['tokens_per_s']:.0f} tok/s ({drafted['decode_steps']} steps vs "
                       f"{plain['decode_steps']}), same tokens: {result['same_tokens']}")
  return result


def cases(ctx: PartContext):
  sampling_module()  # the whole part is skipped without it
  if ctx.dry_run:
    shape = dict(prompts=2, samples=2, prompt_len=8, max_new_tokens=8, repeats=1)
    models = (("tiny", ModelConfig.from_config_dict(tiny.get_config("smoke").model)),)
  else:
    shape = dict(prompts=16, samples=8, prompt_len=256, max_new_tokens=512, repeats=3)
    big = gpu_step.motif_model(smoke=False, seq=4096, remat="none", attention_impl="pallas")
    models = (("tiny", ModelConfig.from_config_dict(tiny.get_config().model)), ("1B", big))
  for name, model in models:
    yield (f"sample {name} {shape['prompts']}x{shape['samples']} rows, "
           f"{shape['max_new_tokens']} new tokens",
           functools.partial(bench_sampler, model, **shape))
  # Small-batch greedy with and without n-gram drafts: the side-by-side Llama shape (a).
  from motif_jax.bench import sampler as cpu_sampler  # noqa: PLC0415
  llama = ModelConfig.from_config_dict(common.model(**cpu_sampler.LLAMA))
  drafts = (dict(batch=2, prompt_len=8, max_new_tokens=8, repeats=1) if ctx.dry_run else
            dict(batch=8, prompt_len=32, max_new_tokens=128, repeats=5))
  yield ("sample llama 8 rows greedy, drafts 0 vs 3",
         functools.partial(bench_drafts, models[0][1] if ctx.dry_run else llama, **drafts))
