"""`run_probe(config, workdir)`: the teacher probe end to end, resumable per candidate.

    student (params dir, run workdir, or `toy`: trained here on the toy target sample)
    for each candidate trace set:
        (a) NLL, (b) style distance, (c) verify rate     measures.py
        (d) SFT from the student on an equal, counted token budget, then pass@k  budget.py,
                                                                             sft_probe.py
        -> WORKDIR/candidates/<name>/result.json (+ samples.jsonl)
    ranking by (d), rank correlations of (a)-(c) with it, recommendation     rank.py
    -> probe.json, probe.md, *_vs_probe.png                                  report.py

A candidate whose result.json carries the same fingerprint (the config without its candidate
list, the resolved token budget, the student and the candidate file's sha256) is not measured
again; the student baseline evaluation is kept the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
from tqdm import tqdm

from motif_jax import checkpoint, eval_run, evaluation, trainer, typed_config
from motif_jax import sharding as shd
from motif_jax.data import curate, formats, sources, toy_corpus
from motif_jax.data.config import DataConfig
from motif_jax.data.nll import make_nll_scorer
from motif_jax.data.style import measure_profile
from motif_jax.optim import OptimConfig
from motif_jax.probe import budget, measures, rank, report
from motif_jax.probe.sft_probe import Prober, ProbeSFTConfig, probe_metrics
from motif_jax.rl import rewards

RESULT, REPORT, CONFIG = "probe.json", "probe.md", "config.json"
CANDIDATES, STUDENT, STUDENT_EVAL = "candidates", "student", "student_eval.json"
TOY = "toy"


@dataclasses.dataclass(frozen=True)
class ProbeRun:
  student: str  # params dir | run workdir | toy
  candidates: tuple[str, ...]  # files, or ("toy",)
  eval_data: str  # toy | prompt files
  data: DataConfig
  nll_batch_size: int
  probe: ProbeSFTConfig
  optim: OptimConfig
  eval: evaluation.EvalConfig
  rewards: rewards.RewardConfig
  mesh: dict

  @classmethod
  def from_config_dict(cls, config) -> "ProbeRun":
    candidates = tuple(s.strip() for s in config.candidates.split(",") if s.strip())
    if not candidates:
      raise ValueError("candidates is empty: pass --config.candidates=a.jsonl,b.jsonl or toy")
    if not config.student:
      raise ValueError("student is empty: pass --config.student=DIR (params or run workdir) "
                       "or toy")
    return cls(student=config.student, candidates=candidates, eval_data=config.eval_data,
               data=DataConfig.from_config_dict(config.data),
               nll_batch_size=config.nll_batch_size,
               probe=typed_config.build(ProbeSFTConfig, config.probe, "probe"),
               optim=OptimConfig.from_config_dict(config.optim),
               eval=typed_config.build(evaluation.EvalConfig, config.eval, "eval"),
               rewards=typed_config.build(rewards.RewardConfig, config.rewards, "rewards"),
               mesh=shd.parse_mesh(",".join(f"{k}={v}" for k, v in config.mesh.items())))


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, value: Any) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(value, indent=2))
  os.replace(tmp, path)  # a kill leaves the old file or the new one, never half of one


def _read_cached(path: Path, fingerprint: str) -> dict | None:
  if not path.exists():
    return None
  saved = json.loads(path.read_text())
  return saved if saved.get("fingerprint") == fingerprint else None


def candidate_files(run: ProbeRun, workdir: Path) -> dict[str, Path]:
  """name -> file; `toy` writes the three toy teachers under WORKDIR/candidates/."""
  if run.candidates == (TOY,):
    out = {}
    for teacher in toy_corpus.TEACHERS:
      path = workdir / CANDIDATES / f"{teacher}.jsonl"
      sources.write_records(str(path), toy_corpus.teacher_records(run.data.toy, teacher))
      out[teacher] = path
    return out
  out = {}
  for spec in run.candidates:
    path = Path(spec)
    if not path.is_file():
      raise ValueError(f"candidates item {spec} is not a file")
    if path.stem in out:
      raise ValueError(f"candidates: two files are named {path.stem!r} (names are file stems)")
    out[path.stem] = path
  return out


def student_dir(config, run: ProbeRun, workdir: Path, log: Callable[[str], None]) -> Path:
  """The student's params directory; `toy` trains it first (config.student_sft) once."""
  if run.student != TOY:
    return eval_run.params_dir(run.student)
  run_dir = workdir / STUDENT
  final = run_dir / trainer.FINAL_PARAMS
  if (final / checkpoint.CONFIG_FILE).exists():
    log(f"student: {final} (trained before)")
    return final
  values = config.student_sft.to_dict()
  toy = DataConfig.from_config_dict(values["data"]).toy
  reference = run_dir / "target_sample.jsonl"
  sources.write_records(str(reference), toy_corpus.reference(toy))
  # The target's own outputs, never a candidate's traces; a one-path list, not a comma-separated
  # string, so that a workdir with a comma in its name stays one path.
  values["data"]["inputs"] = [str(reference)]
  sft = ml_collections.ConfigDict(values)
  sft.mesh = config.mesh
  log(f"student: training the toy target model on {reference}")
  trainer.train(sft, str(run_dir), log=log)
  return final


def _eval_records(run: ProbeRun) -> list:
  if run.eval_data == TOY:
    return toy_corpus.heldout_records(run.data.toy)
  return eval_run.read_prompts(run.eval_data)


def _fingerprint(config, **parts: Any) -> str:
  values = json.loads(config.to_json_best_effort())
  values.pop("candidates")  # adding a candidate does not invalidate the others
  return hashlib.sha256(json.dumps({**values, **parts}, sort_keys=True).encode()).hexdigest()


def run_probe(config, workdir: str, *, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Probe `config.candidates` against `config.student`; returns what probe.json holds."""
  start = time.perf_counter()
  run = ProbeRun.from_config_dict(config)
  root = Path(workdir).absolute()
  root.mkdir(parents=True, exist_ok=True)
  (root / CONFIG).write_text(config.to_json_best_effort(indent=2))
  files = candidate_files(run, root)
  read_spec = formats.read_spec(run.data)
  records = {name: sources.read_records([str(path)], read_spec)[0] for name, path in files.items()}
  for name, recs in records.items():
    if not recs:
      raise ValueError(f"candidates item {files[name]} holds no valid record")
  source = student_dir(config, run, root, log)
  tokenizer = curate.make_tokenizer(run.data)
  checkpoint.check_tokenizer(source, tokenizer, run.data.tokenizer, "data.tokenizer")
  template = run.data.template
  token_budget = run.probe.token_budget or min(
      budget.completion_tokens(recs, tokenizer, template, run.probe.seq_len)
      for recs in records.values())
  eval_records = _eval_records(run)
  log(f"{len(files)} candidates, {token_budget:,} completion tokens each x {run.probe.epochs} "
      f"epochs; {len(eval_records)} eval prompts x {run.eval.num_samples} samples")
  mesh = shd.make_mesh(run.mesh)
  with jax.set_mesh(mesh), rewards.Scorer(run.rewards) as scorer:
    model, params = checkpoint.restore_params(source, mesh=mesh)
    profile = measure_profile(curate.score_all(
        curate.load_reference(run.data.reference, run.data.toy, read_spec), run.data, tokenizer))
    nll_scorer = make_nll_scorer(params, model, tokenizer, template, seq_len=run.data.seq_len,
                                 batch_size=run.nll_batch_size)
    prober = Prober(params, model, run.probe, run.optim, mesh, eval_records=eval_records,
                    eval_cfg=run.eval, tokenizer=tokenizer, template=template, scorer=scorer)
    student_eval = None
    if run.probe.eval_student:
      student_eval = _student_eval(prober, params, config, str(source), root, log)
    results = []
    for name in tqdm(list(files), desc="probe", unit="candidate",
                     disable=jax.process_index() != 0):
      fingerprint = _fingerprint(config, student=str(source), token_budget=token_budget,
                                 file_sha256=_sha256(files[name]))
      out_dir = root / CANDIDATES / name
      cached = _read_cached(out_dir / "result.json", fingerprint)
      if cached is not None:
        log(f"{name}: finished before, skipped")
        results.append(cached)
        continue
      results.append(_probe_candidate(name, records[name], prober, run, tokenizer, profile,
                                      nll_scorer, token_budget, out_dir, fingerprint, log))
  out = assemble(results, student_eval=student_eval, student=str(source),
                 eval_data=run.eval_data, token_budget=token_budget, epochs=run.probe.epochs,
                 rank_by=run.probe.rank_by,
                 eval_info=dict(num_samples=run.eval.num_samples, prompts=len(eval_records),
                                max_new_tokens=run.eval.max_new_tokens, ks=list(run.eval.ks)))
  out["seconds"] = round(time.perf_counter() - start, 1)
  _write_json(root / RESULT, out)
  (root / REPORT).write_text(report.to_markdown(out))
  report.plot(root, out)
  log(out["recommendation"])
  return out


def _student_eval(prober: Prober, params, config, source: str, root: Path,
                  log: Callable[[str], None]) -> dict[str, Any]:
  fingerprint = _fingerprint(config, student=source)
  cached = _read_cached(root / STUDENT_EVAL, fingerprint)
  if cached is not None:
    return cached
  log("evaluating the student itself (the baseline)")
  out = {**probe_metrics(prober.evaluate(params), prober.eval_cfg.ks),
         "fingerprint": fingerprint}
  _write_json(root / STUDENT_EVAL, out)
  return out


def _probe_candidate(name: str, records, prober: Prober, run: ProbeRun, tokenizer, profile,
                     nll_scorer, token_budget: int, out_dir: Path, fingerprint: str,
                     log: Callable[[str], None]) -> dict[str, Any]:
  t0 = time.perf_counter()
  out: dict[str, Any] = {"name": name}
  out.update(measures.cheap_measures(records, run.data, tokenizer, profile, nll_scorer))
  rows = budget.budgeted_batches(records, tokenizer, run.data.template, token_budget=token_budget,
                                 seq_len=run.probe.seq_len, batch_size=run.probe.batch_size,
                                 packing_bins=run.data.packing_bins, seed=run.probe.seed)
  params, stats = prober.train(rows.batches, name=name)
  result = prober.evaluate(params)
  out.update(budget_examples=rows.examples, loss_tokens=rows.loss_tokens,
             packed_tokens=rows.packed_tokens, **stats)
  out.update(probe_metrics(result, run.eval.ks))
  out["seconds"] = round(time.perf_counter() - t0, 1)
  out["fingerprint"] = fingerprint
  out_dir.mkdir(parents=True, exist_ok=True)
  with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in result.rows)
  _write_json(out_dir / "result.json", out)
  log(f"{name}: nll {out['nll']:.3f}, style {out['style_distance']:.2f}, verify "
      f"{out['verify_rate']:.3f}, probe pass@1 {out['probe_pass@1']:.3f} "
      f"({stats['trained_tokens']:,} tokens in {stats['steps']} steps, {out['seconds']:.0f} s)")
  return out


def assemble(candidates: list[dict[str, Any]], *, student_eval: dict | None, student: str,
             eval_data: str, token_budget: int, epochs: int, rank_by: str,
             eval_info: dict[str, Any]) -> dict[str, Any]:
  """probe.json's content from the per-candidate results (pure)."""
  corr = rank.correlations(candidates, rank_by)
  return {"student": student, "eval_data": eval_data, "token_budget": token_budget,
          "epochs": epochs, "eval": eval_info, "rank_by": rank_by, "candidates": candidates,
          "ranking": rank.ranking(candidates, rank_by),
          "ranks": rank.measure_ranks(candidates, rank_by), "correlations": corr,
          "recommendation": rank.recommendation(candidates, corr, rank_by, student_eval),
          "student_eval": student_eval}
