"""The `experiments.evaluate` run: load a checkpoint and a prompt set, evaluate, write the outputs.

Workdir: config.json (resolved config), samples.jsonl (one row per completion, appended and
flushed per prompt batch), eval.json ({"overall", "by_domain", "by_difficulty", "config"}),
eval.md, accuracy_by_difficulty.png, response_lengths.png. A rerun with the same config resumes:
prompts with all their samples in samples.jsonl are not sampled again (a prompt cut off by a crash
is sampled again, its partial rows dropped).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from motif_jax import checkpoint, evaluation, typed_config
from motif_jax import sharding as shd
from motif_jax.data import formats, sources, toy_corpus
from motif_jax.data.config import FieldsConfig, ToyConfig
from motif_jax.data.records import ParseCounts, Record
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import load_tokenizer
from motif_jax.rl import rewards

SAMPLES, RESULT, REPORT, CONFIG = "samples.jsonl", "eval.json", "eval.md", "config.json"
FINAL_PARAMS = checkpoint.FINAL_PARAMS  # where experiments.sft puts a run's final params
# Sections whose change makes earlier samples incomparable.
_RESUME_KEYS = ("checkpoint", "data", "format", "fields", "default_domain", "default_source",
                "max_prompts", "toy", "tokenizer", "template", "eval", "rewards")


def params_dir(path: str) -> Path:
  """A params directory, or a run workdir's final/; a one-line error names what was expected."""
  if not path:
    raise ValueError("checkpoint is empty: pass --config.checkpoint=DIR")
  source = Path(path)
  if (source / FINAL_PARAMS / checkpoint.CONFIG_FILE).exists():
    return source / FINAL_PARAMS
  if (source / checkpoint.CONFIG_FILE).exists():
    return source
  what = "does not exist" if not source.exists() else "holds no params"
  raise ValueError(f"checkpoint={path} {what} (expected {checkpoint.CONFIG_FILE} and "
                   f"{checkpoint.PARAMS_DIR}/, or a run workdir with {FINAL_PARAMS}/)")


def read_prompt_files(patterns: str, spec: formats.ReadSpec = formats.NATIVE
                      ) -> tuple[list[Record], dict[str, ParseCounts]]:
  """Prompt records of comma-separated JSONL/Parquet/ArrayRecord paths or globs, in any record
  format `spec` reads (motif_jax/data/formats.py) as a prompt set: a prompt and an answer or
  tests, the response optional (`response=""` without one). Malformed items are counted per file
  and reason; a missing file, or one without a valid prompt record, is a one-line error."""
  paths = [p.strip() for p in patterns.split(",") if p.strip()]
  if not paths:
    raise ValueError(f"no prompt file named ({patterns!r})")
  return sources.read_records(paths, dataclasses.replace(spec, prompt_only=True))


def read_prompts(patterns: str, spec: formats.ReadSpec = formats.NATIVE, *,
                 log: Callable[[str], None] | None = None) -> list[Record]:
  """`read_prompt_files`' records; `log` gets one line per file with its parse counts."""
  records, counts = read_prompt_files(patterns, spec)
  for path, count in counts.items() if log is not None else ():
    log(count_line(path, count.to_json()))
  return records


def count_line(path: str, count: dict[str, Any]) -> str:
  """`p.jsonl: 5 prompt records, invalid {'missing_answer_and_tests': 1}` (ParseCounts JSON)."""
  return f"{path}: {count['valid']} prompt records, invalid {count['invalid'] or 'none'}"


def read_spec(config) -> formats.ReadSpec:
  """How `config.data` files are read: `format`, `fields`, `default_domain`, `default_source`
  (as data.* of the training configs) and the template's think markers."""
  return formats.ReadSpec(format=config.format,
                          fields=typed_config.build(FieldsConfig, config.fields, "fields"),
                          default_domain=config.default_domain,
                          default_source=config.default_source,
                          think_open=config.template.think_open,
                          think_close=config.template.think_close, prompt_only=True)


def load_records(config) -> tuple[list[Record], dict[str, dict]]:
  """The prompts to evaluate and the parse counts of each prompt file ({} for toy)."""
  if config.data == "toy":
    records = toy_corpus.heldout_records(typed_config.build(ToyConfig, config.toy, "toy"))
    counts = {}
  else:
    records, counts = read_prompt_files(config.data, read_spec(config))
  records = records[:config.max_prompts] if config.max_prompts else records
  return records, {path: count.to_json() for path, count in counts.items()}


def _read_samples(path: Path, num_samples: int) -> list[dict]:
  """Rows of prompts that have all their samples; a torn last line is ignored."""
  rows = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  counts: dict[str, int] = {}
  for row in rows:
    counts[row["prompt_id"]] = counts.get(row["prompt_id"], 0) + 1
  return [row for row in rows if counts[row["prompt_id"]] == num_samples]


def _check_resume(workdir: Path, config) -> None:
  saved = workdir / CONFIG
  if not (workdir / SAMPLES).exists() or not saved.exists():
    return
  before, now = json.loads(saved.read_text()), json.loads(config.to_json_best_effort())
  changed = [k for k in _RESUME_KEYS if before.get(k) != now.get(k)]
  if changed:
    raise ValueError(f"workdir {workdir} holds samples of another config (changed: "
                     f"{', '.join(changed)}); use a fresh --workdir")


def run(config, workdir: str, *, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Evaluate `config.checkpoint` on `config.data`; returns what eval.json holds."""
  workdir_path = Path(workdir).absolute()
  source = params_dir(config.checkpoint)
  records, inputs = load_records(config)
  for path, count in inputs.items():
    log(count_line(path, count))
  eval_cfg = typed_config.build(evaluation.EvalConfig, config.eval, "eval")
  reward_cfg = typed_config.build(rewards.RewardConfig, config.rewards, "rewards")
  template = typed_config.build(ChatTemplate, config.template, "template")
  tokenizer = load_tokenizer(config.tokenizer, template.special_tokens())
  checkpoint.check_tokenizer(source, tokenizer, config.tokenizer, "tokenizer")
  workdir_path.mkdir(parents=True, exist_ok=True)
  _check_resume(workdir_path, config)
  (workdir_path / CONFIG).write_text(config.to_json_best_effort(indent=2))
  samples = workdir_path / SAMPLES
  previous = _read_samples(samples, eval_cfg.num_samples)
  _write_rows(samples, previous, mode="w")  # drop the partial rows of a torn batch
  done = frozenset(row["prompt_id"] for row in previous)
  todo = sum(evaluation.prompt_id(r) not in done for r in records)
  log(f"{len(records)} prompts from {config.data}: {len(records) - todo} done, {todo} to sample "
      f"x {eval_cfg.num_samples}; params from {source}")
  mesh = shd.make_mesh(shd.parse_mesh(",".join(f"{k}={v}" for k, v in config.mesh.items())))
  start = time.perf_counter()
  with jax.set_mesh(mesh), rewards.Scorer(reward_cfg) as scorer:
    model, params = checkpoint.restore_params(source, mesh=mesh)
    result = evaluation.evaluate(params, records, eval_cfg, model=model, tokenizer=tokenizer,
                                 template=template, scorer=scorer, skip=done,
                                 on_rows=lambda rows: _write_rows(samples, rows, mode="a"),
                                 progress=True)
  wanted = {evaluation.prompt_id(r) for r in records}
  rows = [row for row in previous + result.rows if row["prompt_id"] in wanted]
  metrics = evaluation.aggregate(rows, eval_cfg.ks, answers={evaluation.prompt_id(r): r.answer
                                                              for r in records})
  out = {**metrics, "config": json.loads(config.to_json_best_effort()),
         "checkpoint": str(source), "seconds": round(time.perf_counter() - start, 2),
         "sampled_prompts": todo, "inputs": inputs}
  (workdir_path / RESULT).write_text(json.dumps(out, indent=2))
  (workdir_path / REPORT).write_text(to_markdown(out))
  plot(workdir_path, metrics, rows)
  return out


def _write_rows(path: Path, rows: list[dict], *, mode: str) -> None:
  with open(path, mode, encoding="utf-8") as f:
    f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    f.flush()
    os.fsync(f.fileno())


def _metric_table(groups: dict[str, dict], title: str) -> list[str]:
  if not groups:
    return []
  names = list(dict.fromkeys(k for g in groups.values() for k in g))
  lines = [f"## {title}", "", f"| {title.split()[-1]} | " + " | ".join(names) + " |",
           "|---" * (len(names) + 1) + "|"]
  for key, values in groups.items():
    cells = [f"{values[n]:.3f}" if isinstance(values.get(n), float) else str(values.get(n, ""))
             for n in names]
    lines.append(f"| {key} | " + " | ".join(cells) + " |")
  return lines + [""]


def to_markdown(out: dict[str, Any]) -> str:
  lines = [f"# Evaluation of {out['checkpoint']}", "",
           f"Prompts from `{out['config']['data']}`, {out['config']['eval']['num_samples']} "
           f"samples each at temperature {out['config']['eval']['temperature']}.", ""]
  lines += _metric_table({"all": out["overall"]}, "Overall")
  lines += _metric_table(out["by_domain"], "By domain")
  lines += _metric_table(out["by_difficulty"], "By difficulty")
  return "\n".join(lines)


def plot(workdir: Path, metrics: dict[str, Any], rows: list[dict]) -> None:
  """accuracy_by_difficulty.png (pass@1 per difficulty) and response_lengths.png."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt  # noqa: PLC0415
  fig, ax = plt.subplots(figsize=(5, 3.5))
  by = metrics["by_difficulty"]
  ax.bar(list(by), [v.get("pass@1", 0.0) for v in by.values()], color="tab:blue")
  ax.set(xlabel="difficulty", ylabel="pass@1", ylim=(0, 1), title="accuracy by difficulty")
  fig.tight_layout()
  fig.savefig(workdir / "accuracy_by_difficulty.png", dpi=80)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for correct, color in ((True, "tab:green"), (False, "tab:red")):
    lengths = [r["length"] for r in rows if r["correct"] == correct]
    ax.hist(lengths, bins=20, alpha=0.6, color=color, label="correct" if correct else "wrong")
  ax.set(xlabel="response tokens", ylabel="completions", title="response lengths")
  ax.legend()
  fig.tight_layout()
  fig.savefig(workdir / "response_lengths.png", dpi=80)
  plt.close(fig)
