"""experiments.evaluate end to end on a tiny random-init checkpoint: every output file, resume
without re-sampling, one-line errors, prompt files without responses."""

import json
import subprocess
import sys

import jax
import pytest

from configs import evaluate as evaluate_config
from configs import tiny
from motif_jax import checkpoint, eval_run, sampling
from motif_jax.data import sources
from motif_jax.data.records import Record
from motif_jax.model import ModelConfig, init_params


@pytest.fixture(scope="module")
def params_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("ckpt")
  cfg = ModelConfig.from_config_dict(tiny.get_config("smoke").model)
  checkpoint.save_params(directory / "final", cfg, init_params(jax.random.key(0), cfg))
  return directory  # a run workdir: params in final/


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.evaluate", *args],
                        capture_output=True, text=True)


def _config(params_dir, **overrides):
  config = evaluate_config.get_config("smoke")
  config.checkpoint = str(params_dir)
  for key, value in overrides.items():
    config[key] = value
  return config


def _counting_sampler(monkeypatch):
  prompts_sampled = []
  real = sampling.sample

  def sample(params, prompts, *args, **kwargs):
    prompts_sampled.append(len(prompts))
    return real(params, prompts, *args, **kwargs)

  monkeypatch.setattr(sampling, "sample", sample)
  return prompts_sampled


def test_cli_smoke_writes_every_file_then_resumes_without_resampling(params_dir, tmp_path,
                                                                     monkeypatch):
  run = _cli("--config=configs/evaluate.py:smoke", f"--workdir={tmp_path}",
             f"--config.checkpoint={params_dir}")
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads((tmp_path / "eval.json").read_text())
  assert {"pass@1", "pass@2", "maj@2", "mean_length", "truncation_rate",
          "format_error_rate"} <= set(result["overall"])
  assert set(result["by_domain"]) == {"arith", "lists", "code"}
  assert set(result["by_difficulty"]) == {"2", "3"}
  assert result["config"]["eval"]["num_samples"] == 2 and result["sampled_prompts"] == 6
  rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
  assert len(rows) == 12 and len({r["prompt_id"] for r in rows}) == 6
  assert {"prompt_id", "completion", "answer", "reward", "details", "length",
          "finish_reason"} <= set(rows[0])
  assert all(1 <= r["length"] <= 16 for r in rows)
  assert result["overall"]["mean_length"] == pytest.approx(sum(r["length"] for r in rows) / 12)
  for name in ("accuracy_by_difficulty.png", "response_lengths.png"):
    assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
  assert "| code |" in (tmp_path / "eval.md").read_text()

  # Rerun: every prompt is in samples.jsonl, so the sampler is not called at all.
  sampled = _counting_sampler(monkeypatch)
  again = eval_run.run(_config(params_dir), str(tmp_path), log=lambda _: None)
  assert sampled == [] and again["sampled_prompts"] == 0
  assert again["overall"] == result["overall"]
  # A crash mid-batch: the last prompt lost a row and the file ends in a torn line.
  lines = (tmp_path / "samples.jsonl").read_text().splitlines()
  (tmp_path / "samples.jsonl").write_text("\n".join(lines[:-1]) + '\n{"prompt_id": "ari')
  again = eval_run.run(_config(params_dir), str(tmp_path), log=lambda _: None)
  assert sampled == [1] and again["sampled_prompts"] == 1
  rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
  assert len(rows) == 12 and [r["prompt_id"] for r in rows[:10]] == [
      r["prompt_id"] for r in map(json.loads, lines[:10])]
  # Another config over the same samples is refused.
  with pytest.raises(ValueError, match=r"another config \(changed: eval\)"):
    config = _config(params_dir)
    config.eval.temperature = 0.5
    eval_run.run(config, str(tmp_path), log=lambda _: None)


def test_missing_checkpoint_or_data_file_is_a_one_line_error(params_dir, tmp_path):
  run = _cli("--config=configs/evaluate.py:smoke", f"--workdir={tmp_path}",
             f"--config.checkpoint={tmp_path}/nothing")
  assert run.returncode != 0
  assert run.stderr.strip().splitlines()[-1] == (
      f"error: checkpoint={tmp_path}/nothing does not exist (expected model_config.json and "
      "params/, or a run workdir with final/)")
  with pytest.raises(FileNotFoundError, match="no file matches"):
    eval_run.run(_config(params_dir, data=str(tmp_path / "prompts.jsonl")), str(tmp_path))
  with pytest.raises(ValueError, match="checkpoint is empty"):
    eval_run.run(_config(""), str(tmp_path))


def test_prompt_files_need_no_response_and_keep_answers_or_tests(tmp_path):
  rows = [dict(prompt="1 + 1?", domain="arith", answer="2", id="a"),
          dict(prompt="Write f.", domain="code", tests=["assert f() == 1"], difficulty=3),
          dict(prompt="no reference", domain="arith"), "not json"]
  path = tmp_path / "prompts.jsonl"
  path.write_text("\n".join(json.dumps(r) if isinstance(r, dict) else r for r in rows) + "\n")
  records = eval_run.read_prompts(str(path))
  assert [(r.domain, r.answer, r.tests) for r in records] == [
      ("arith", "2", ()), ("code", None, ("assert f() == 1",))]
  assert records[0].meta["id"] == "a" and records[1].meta["difficulty"] == 3
  parquet = tmp_path / "prompts.parquet"
  sources.write_records(str(parquet), [Record(prompt="2 + 2?", response="-", domain="math",
                                              source="s", answer="4")])
  assert eval_run.read_prompts(str(parquet))[0].answer == "4"
  with pytest.raises(ValueError, match="no valid prompt record"):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    eval_run.read_prompts(str(tmp_path / "bad.jsonl"))


def test_a_tokenizer_larger_than_the_checkpoint_vocabulary_is_refused_before_loading(
    params_dir, tmp_path, monkeypatch):
  """tokenizer=toy has 1,017 ids, the smoke checkpoint 512 rows: a one-line error before the
  params are read or the workdir is written (an id past the table would be clamped silently)."""
  def no_restore(*_, **__):
    raise AssertionError("read the params before checking the tokenizer")

  monkeypatch.setattr(checkpoint, "restore_params", no_restore)
  with pytest.raises(ValueError, match=r"the checkpoint's model vocab_size=512 is smaller than "
                                       r"the \d+ ids of tokenizer='toy'"):
    eval_run.run(_config(params_dir, tokenizer="toy"), str(tmp_path / "eval"))
  assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("trained, ours", [("toy", ""), ("", "toy")])
def test_a_run_trained_with_another_builtin_tokenizer_is_refused_before_loading(
    params_dir, tmp_path, monkeypatch, trained, ours):
  """Bytes and toy words both fit a 1,024-row model, so only the run's own config.json (beside
  final/) tells that every id would mean another token: a one-line error naming the field."""
  run = tmp_path / "run"
  (run / "final").mkdir(parents=True)
  for name in ("params", checkpoint.CONFIG_FILE):
    (run / "final" / name).symlink_to(params_dir / "final" / name)
  (run / "config.json").write_text(json.dumps({"data": {"tokenizer": trained}}))
  monkeypatch.setattr(checkpoint, "restore_params", lambda *_, **__: pytest.fail("read params"))
  with pytest.raises(ValueError, match=rf"tokenizer=.*trained with data.tokenizer="
                                       rf"'{trained or 'bytes'}'"):
    eval_run.run(_config(run, tokenizer=ours), str(tmp_path / "eval"))
  checkpoint.check_trained_tokenizer(run / "final", trained, "tokenizer")  # the same: no error
  (run / "config.json").write_text(json.dumps({"data": {"tokenizer": ""}}))
  checkpoint.check_trained_tokenizer(params_dir / "final", ours, "tokenizer")  # no run config
  with pytest.raises(ValueError, match="trained with data.tokenizer='bytes'"):
    checkpoint.check_trained_tokenizer(run / "final", "/m/tokenizer.json", "data.tokenizer")
  # Two tokenizer files are not compared by path (the same file may be spelt two ways).
  (run / "config.json").write_text(json.dumps({"data": {"tokenizer": "/a/tokenizer.json"}}))
  checkpoint.check_trained_tokenizer(run / "final", "/b/tokenizer.json", "tokenizer")
