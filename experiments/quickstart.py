"""Quickstart: data alignment, SFT, then RL, end to end on CPU in about ten minutes.

  make quickstart            # = python -m experiments.quickstart --workdir=/tmp/motif_quickstart

1. data: generates the toy reasoning corpus (the `small` ladder of arithmetic and list problems,
   difficulty = 1-4 operations, each answered by an aligned and a misaligned teacher) and runs the
   alignment filters (format, verification, verbosity, step granularity, style profile, dedup):
   WORKDIR/data holds kept.jsonl and report.md. The SFT set, sft.jsonl, is the kept traces with
   `--answer_only` of them (default 20%) answered without working (`<think>\n</think>\n` and
   the boxed answer): a hybrid think / no-think set, so the SFT model sometimes guesses.
2. SFT of the tiny Motif-architecture model (grouped differential attention, PolyNorm) on
   sft.jsonl (configs/sft.py:quickstart), then greedy accuracy on held-out problems per domain
   and difficulty: WORKDIR/sft holds checkpoints, metrics.jsonl, TensorBoard events and final/.
3. RL from the SFT model (configs/rl.py:quickstart: GRPO groups, clip-higher, pass-rate band,
   replay, new problems each batch) and the same held-out evaluation: WORKDIR/rl.
4. Prints per-tier accuracy before and after RL, greedy and sampled (pass@1 at temperature 1,
   WORKDIR/eval_sft, WORKDIR/eval_rl), and the share of samples answered without working; writes
   WORKDIR/summary.json, {"sft": {"arith/d1": greedy accuracy, ...}, "rl": {...}}, and
   WORKDIR/sampled.json, {"sft": {"arith/d1": pass@1, ...}, "rl": {...},
   "answer_only_share": {"sft": share, "rl": share}}.

Re-running resumes: a finished stage is skipped (its accuracies are read back from its
metrics.jsonl), an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
import time

from absl import app, flags, logging

from configs import evaluate as evaluate_config
from configs import rl as rl_config
from configs import sft as sft_config
from motif_jax import eval_run, loop, trainer
from motif_jax.data import curate, hybrid, report, toy_corpus
from motif_jax.data.config import DataConfig
from motif_jax.launch import distributed
from motif_jax.rl import trainer as rl_trainer

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/motif_quickstart", "Output directory.")
_STEPS = flags.DEFINE_integer("steps", 0, "SFT steps (0 = configs/sft.py:quickstart's).")
_RL_STEPS = flags.DEFINE_integer("rl_steps", 0,
                                 "RL rollout batches (0 = configs/rl.py:quickstart's).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny corpus and a few steps (seconds; for tests).")
_ANSWER_ONLY = flags.DEFINE_float(
    "answer_only", 0.2, "Share of the SFT set's responses replaced by answer-only ones (no "
    "working): what RL learns to stop doing. 0 = the kept traces as they are.")
_SAMPLES = flags.DEFINE_integer("samples", 4, "Samples per held-out problem at temperature 1 "
                                "for the sampled pass@1 (0 = greedy only).")

ACCURACY = "eval/accuracy/"  # the Evaluator's per-tier keys: eval/accuracy/<domain>/d<difficulty>


def tier_accuracy(eval_metrics: dict[str, float]) -> dict[str, float]:
  """{"arith/d1": accuracy, ...} from an evaluation's flat `eval/accuracy/<domain>/d<k>` keys,
  in domain then difficulty order."""
  tiers = {k[len(ACCURACY):]: float(v) for k, v in eval_metrics.items() if k.startswith(ACCURACY)}

  def order(tier: str) -> tuple[str, int]:
    domain, _, level = tier.rpartition("/d")
    return domain, int(level) if level.isdigit() else 0

  return dict(sorted(tiers.items(), key=lambda kv: order(kv[0])))


def final_eval(run_dir: str) -> dict[str, float] | None:
  """The last evaluation a finished run (its final/ params exist) wrote to metrics.jsonl."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.isdir(os.path.join(run_dir, loop.FINAL_PARAMS)) or not os.path.exists(path):
    return None
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  evals = [r for r in rows if any(k.startswith(ACCURACY) for k in r)]
  return evals[-1] if evals else None


def table(sft: dict[str, float], rl: dict[str, float] | None, problems: int) -> str:
  """Per-tier accuracy before and after RL as aligned text."""
  lines = [f"  {'tier':<10} {'SFT':>6} {'RL':>6} {'change':>7}   ({problems} held-out problems "
           "per tier, greedy)"]
  for tier, before in sft.items():
    after = None if rl is None else rl.get(tier)
    cells = ("" if after is None else f"{after:6.3f}", "" if after is None
             else f"{after - before:+7.3f}")
    lines.append(f"  {tier:<10} {before:6.3f} {cells[0]:>6} {cells[1]:>7}")
  return "\n".join(lines)


def sampled_eval(checkpoint: str, workdir: str, sft_cfg, samples: int) -> tuple[dict, float]:
  """`samples` completions at temperature 1 per held-out problem of the SFT run's ladder
  (experiments.evaluate's module, resumable): ({tier: pass@1}, share answered without working)."""
  config = evaluate_config.get_config("quickstart")
  config.tokenizer = sft_cfg.data.tokenizer
  config.toy = copy.deepcopy(sft_cfg.data.toy)  # the SFT run's ladder, its held-out problems
  config.toy.heldout_per_difficulty = sft_cfg.train.eval_problems
  config.eval.max_new_tokens = sft_cfg.train.max_new_tokens
  config.eval.num_samples = samples
  config.eval.ks = "1"
  config.checkpoint = checkpoint
  eval_run.run(config, workdir, log=lambda _: None)
  correct: dict[str, list[bool]] = {}
  direct = total = 0
  with open(os.path.join(workdir, eval_run.SAMPLES)) as f:
    for line in f:
      row = json.loads(line)
      correct.setdefault(f"{row['domain']}/d{row['difficulty']}", []).append(row["correct"])
      direct += hybrid.answered_without_working(row["completion"])
      total += 1
  tiers = tier_accuracy({ACCURACY + t: sum(v) / len(v) for t, v in correct.items()})
  return tiers, direct / max(total, 1)


def make_configs(smoke: bool, sft_steps: int, rl_steps: int):
  """SFT and RL configs of one variant; the RL run evaluates exactly as the SFT run does (same
  held-out problems and budget), so the two accuracies compare."""
  variant = "smoke" if smoke else "quickstart"
  sft = sft_config.get_config(f"{variant},steps={sft_steps}")
  rl = rl_config.get_config(f"{variant},steps={rl_steps}")
  rl.train.eval_problems = sft.train.eval_problems
  rl.train.eval_max_new_tokens = sft.train.max_new_tokens
  return sft, rl


def _write_summary(path: str, summary: dict) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=1)
  os.replace(path + ".tmp", path)


def main(argv):
  del argv
  distributed.initialize()  # joins a multi-host run when launched with a coordinator
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  start = time.perf_counter()
  if not 0.0 <= _ANSWER_ONLY.value <= 1.0:
    raise SystemExit(f"error: --answer_only={_ANSWER_ONLY.value} must be in [0, 1]")
  if _SAMPLES.value < 0:
    raise SystemExit(f"error: --samples={_SAMPLES.value} must be >= 0")
  workdir = _WORKDIR.value
  config, rl_cfg = make_configs(_SMOKE.value, _STEPS.value, _RL_STEPS.value)
  data_dir, sft_dir, rl_dir = (os.path.join(workdir, d) for d in ("data", "sft", "rl"))
  summary_path = os.path.join(workdir, "summary.json")
  os.makedirs(data_dir, exist_ok=True)

  print("== 1/4 data: toy corpus from two teachers through the alignment filters", flush=True)
  kept, report_md = os.path.join(data_dir, "kept.jsonl"), os.path.join(data_dir, "report.md")
  sft_set = os.path.join(data_dir, "sft.jsonl")
  if os.path.exists(report_md):  # written last
    print(f"  done before: {report_md}")
  else:
    filter_config = config.data.to_dict()
    filter_config.update(inputs="toy", filter_on_load=True)
    data_cfg = DataConfig.from_config_dict(filter_config)
    curation = curate.curate(data_cfg)
    curate.save(data_dir, curation)
    toy_corpus.save_splits(data_dir, data_cfg.toy)
    result = report.write_report(data_dir, curation)
    for source, row in result["by_source"].items():
      print(f"  {source}: {row['input']} traces, {row['kept']} kept")
    print(f"  report: {data_dir}/report.md")
  if not os.path.exists(sft_set):  # also for a data stage finished by an earlier version
    records, replaced = hybrid.answer_only_mix(kept, sft_set, _ANSWER_ONLY.value,
                                               config.data.seed)
    print(f"  SFT set: {records} kept traces, {replaced} of them answered without working "
          f"(--answer_only={_ANSWER_ONLY.value:g}): {sft_set}")

  problems = config.train.eval_problems
  print(f"== 2/4 SFT of the tiny Motif-architecture model on the SFT set, then greedy "
        f"accuracy on {problems} held-out problems per tier", flush=True)
  config.data.inputs = sft_set
  config.data.filter_on_load = False
  sft_eval = final_eval(sft_dir)
  if sft_eval is None:
    result = trainer.train(config, sft_dir)
    sft_eval = result["eval"]
    print(f"  trained {result['step']} steps at {result['tokens_per_s']:,.0f} completion "
          f"tokens/s")
  else:
    print(f"  done before: {sft_dir}")
  summary = {"sft": tier_accuracy(sft_eval)}
  _write_summary(summary_path, summary)
  print(table(summary["sft"], None, problems), flush=True)

  print(f"== 3/4 RL from the SFT model ({rl_cfg.train.num_steps} rollout batches of "
        f"{rl_cfg.train.prompts_per_batch} prompts x {rl_cfg.rl.group_size} samples), then "
        "the same evaluation", flush=True)
  rl_cfg.rl.init_from = sft_dir
  rl_eval = final_eval(rl_dir)
  if rl_eval is None:
    result = rl_trainer.train(rl_cfg, rl_dir)
    rl_eval = result["eval"]
    last = result["rl"]
    print(f"  {result['step']} rollout batches; last batch: reward "
          f"{last.get('rollout/reward', float('nan')):.3f}, pass rate "
          f"{last.get('rollout/pass_rate', float('nan')):.3f}")
  else:
    print(f"  done before: {rl_dir}")
  summary["rl"] = tier_accuracy(rl_eval)
  _write_summary(summary_path, summary)

  print("== 4/4 held-out accuracy per tier before and after RL")
  print(table(summary["sft"], summary["rl"], problems))
  if _SAMPLES.value > 0:
    sampled: dict = {"answer_only_share": {}}
    for stage, run_dir in (("sft", sft_dir), ("rl", rl_dir)):
      sampled[stage], sampled["answer_only_share"][stage] = sampled_eval(
          run_dir, os.path.join(workdir, f"eval_{stage}"), config, _SAMPLES.value)
    _write_summary(os.path.join(workdir, "sampled.json"), sampled)
    print(table(sampled["sft"], sampled["rl"], problems).replace(
        "greedy)", f"pass@1 of {_SAMPLES.value} samples at temperature 1)"))
    share = sampled["answer_only_share"]
    print(f"  samples answered without working: {share['sft']:.3f} after SFT, {share['rl']:.3f} "
          "after RL")
  print(f"total {time.perf_counter() - start:.0f}s; summary: {summary_path}; outputs in "
        f"{workdir}")


if __name__ == "__main__":
  app.run(main)
