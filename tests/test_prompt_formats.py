"""Prompt sets (evaluation and RL prompts) in every record format: a prompt and an answer or tests,
no response; read by the shared readers of motif_jax/data/formats.py with data.format / data.fields,
parse counts reported, one-line errors for unusable files."""

import json
import subprocess
import sys

import jax
import pytest

from configs import evaluate as evaluate_config
from configs import rl as rl_config
from configs import tiny
from motif_jax import checkpoint, eval_run, evaluation
from motif_jax.data import formats, sources
from motif_jax.data.records import Record
from motif_jax.data.tokenizer import load_tokenizer
from motif_jax.model import ModelConfig, init_params
from motif_jax.rl import trainer as rl_trainer
from data_helpers import small_config

PROMPT = "Start with 1. Add 2. What is the result?"
USER = {"role": "user", "content": PROMPT}
SYSTEM = {"role": "system", "content": "Box the answer."}
META = {"domain": "arith", "source": "set", "answer": 3, "difficulty": 2}
# What every prompt-only item below reads as.
EXPECTED = Record(prompt=PROMPT, response="", domain="arith", source="set", answer="3",
                  meta={"difficulty": 2})
NATIVE = formats.NATIVE

SAME_PROMPT = {  # name -> (item, data config overrides; None = the native reading)
    "flat_prompt": ({"prompt": PROMPT, **META}, None),
    "flat_prompt_empty_response": ({"prompt": PROMPT, "response": "", **META}, None),
    "messages_ending_in_user": ({"messages": [USER], **META}, None),
    "messages_text_parts": ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": PROMPT}]}], **META}, None),
    "trl_conversational_prompt": ({"prompt": [USER], **META}, None),
    "prompt_completion_forced": ({"prompt": PROMPT, **META}, dict(format="prompt_completion")),
    "messages_forced": ({"messages": [USER], **META}, dict(format="messages")),
    "math_problem_answer": ({"problem": PROMPT, "answer": 3, "difficulty": 2},
                            dict(fields=dict(prompt="problem"), default_domain="arith",
                                 default_source="set")),
}


def _write_jsonl(path, items):
  path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items))
  return str(path)


def _spec(overrides):
  return NATIVE if overrides is None else formats.read_spec(small_config(**overrides))


@pytest.mark.parametrize("name", sorted(SAME_PROMPT))
def test_every_prompt_only_format_reads_as_the_same_record(tmp_path, name):
  item, overrides = SAME_PROMPT[name]
  records = eval_run.read_prompts(_write_jsonl(tmp_path / f"{name}.jsonl", [item]),
                                  _spec(overrides))
  assert records == [EXPECTED]


def test_code_prompts_with_mapped_tests_and_system_turns(tmp_path):
  code = _write_jsonl(tmp_path / "apps.jsonl", [
      {"question": "Write f.", "test_cases": ["assert f() == 1"], "category": "code"}])
  cfg = small_config(fields=dict(prompt="question", tests="test_cases", domain="category"))
  (r,) = eval_run.read_prompts(code, formats.read_spec(cfg))
  assert r == Record(prompt="Write f.", response="", domain="code", source="apps", answer=None,
                     tests=("assert f() == 1",))
  # The system turns of chat prompts are kept, as for SFT records, in both chat shapes.
  chat = _write_jsonl(tmp_path / "chat.jsonl", [
      {"messages": [SYSTEM, USER], "answer": "3"}, {"prompt": [SYSTEM, USER], "answer": "3"}])
  records = eval_run.read_prompts(chat)
  assert [(r.prompt, r.response, r.meta, r.domain) for r in records] == [
      (PROMPT, "", {"system": "Box the answer."}, "chat")] * 2


def test_a_response_is_kept_in_a_prompt_set_and_still_required_for_training(tmp_path):
  think = "<think>\n1. 1 + 2 = 3\n</think>\n\\boxed{3}"
  path = _write_jsonl(tmp_path / "mixed.jsonl", [
      {"messages": [USER, {"role": "assistant", "content": think}], "answer": "3"},
      {"prompt": PROMPT, "completion": think, "answer": "3"},
      {"messages": [USER], "answer": "3"}, {"prompt": PROMPT, "answer": "3"}])
  assert [r.response for r in eval_run.read_prompts(path)] == [think, think, "", ""]
  # Training reads (not a prompt set) still count a missing response.
  records, counts = sources.read_records([path], NATIVE)
  assert len(records) == 2 and counts[path].invalid == {"missing_assistant": 1,
                                                         "missing_response": 1}


def test_malformed_prompt_items_are_counted_by_reason_and_logged(tmp_path):
  bot = {"role": "assistant", "content": "\\boxed{3}"}
  path = _write_jsonl(tmp_path / "bad.jsonl", [
      {"messages": [USER], "answer": "3"},  # valid
      {"messages": [USER, bot, USER], "answer": "3"},  # multi_turn
      {"messages": [SYSTEM], "answer": "3"},  # missing_user
      {"messages": [bot], "answer": "3"},  # missing_user
      {"prompt": [USER, bot], "answer": "3"},  # assistant_in_prompt
      {"prompt": 5, "answer": "3"},  # bad_type_prompt
      {"messages": [USER]},  # missing_answer_and_tests
      {"problem": PROMPT, "answer": "3"},  # missing_prompt
      "{oops", "[1]"])
  lines = []
  records = eval_run.read_prompts(path, log=lines.append)
  assert len(records) == 1
  invalid = {"assistant_in_prompt": 1, "bad_type_prompt": 1, "malformed_json": 1,
             "missing_answer_and_tests": 1, "missing_prompt": 1, "missing_user": 2,
             "multi_turn": 1, "not_an_object": 1}
  _, counts = eval_run.read_prompt_files(path)
  assert counts[path].to_json() == dict(valid=1, invalid=invalid)
  assert lines == [f"{path}: 1 prompt records, invalid {invalid}"]


def test_unusable_prompt_files_are_one_line_errors(tmp_path):
  empty = _write_jsonl(tmp_path / "empty.jsonl", [])
  bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}, "{oops"])
  cases = [(str(tmp_path / "nope.jsonl"), FileNotFoundError, "no file matches"),
           (empty, ValueError, "empty.jsonl: no valid prompt record (the file is empty)"),
           (bad, ValueError, "bad.jsonl: no valid prompt record ({'missing_answer_and_tests': 1, "
                             "'malformed_json': 1})"),
           (" , ", ValueError, "no prompt file named")]
  for patterns, error, needle in cases:
    with pytest.raises(error) as info:
      eval_run.read_prompts(patterns)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_rl_prompt_pool_reads_mapped_chat_prompts_with_their_system_turn(tmp_path):
  config = rl_config.get_config("smoke")
  config.train.prompts = _write_jsonl(tmp_path / "rl.jsonl", [
      {"messages": [SYSTEM, USER], "answer": "3"},
      {"problem": "Start with 2. Add 2. What is the result?", "answer": "4"}])
  config.data.fields.prompt = "problem"
  config.data.default_domain = "arith"
  config.rl.domains = "arith"
  run = rl_trainer.RLRunConfig.from_config_dict(config)
  template = run.data.template
  tokenizer = load_tokenizer(run.data.tokenizer, template.special_tokens())
  pool = rl_trainer.load_pool(run, tokenizer)
  assert [(r.prompt, r.answer) for r in pool.records] == [
      (PROMPT, "3"), ("Start with 2. Add 2. What is the result?", "4")]
  assert tokenizer.decode(pool.prompt_tokens[0].tolist()) == template.prompt(PROMPT,
                                                                             "Box the answer.")


# ---- experiments.evaluate on prompt files in other formats --------------------------------------

@pytest.fixture(scope="module")
def params_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("ckpt")
  cfg = ModelConfig.from_config_dict(tiny.get_config("smoke").model)
  checkpoint.save_params(directory / "final", cfg, init_params(jax.random.key(0), cfg))
  return directory


def test_evaluate_reads_messages_and_problem_answer_files(params_dir, tmp_path):
  chat = _write_jsonl(tmp_path / "chat.jsonl", [
      {"messages": [SYSTEM, {"role": "user", "content": f"{PROMPT} ({i})"}], "answer": "3",
       "domain": "arith"} for i in range(2)] + ["{oops"])
  gsm = _write_jsonl(tmp_path / "gsm.jsonl", [
      {"problem": "Start with 2. Add 2. What is the result?", "answer": 4, "level": 1}])
  config = evaluate_config.get_config("smoke")
  config.checkpoint = str(params_dir)
  config.data = f"{chat},{gsm}"
  config.fields.prompt = "problem"  # the chat file is read by fields.messages
  lines = []
  out = eval_run.run(config, str(tmp_path / "eval"), log=lines.append)
  assert out["inputs"] == {chat: dict(valid=2, invalid={"malformed_json": 1}),
                           gsm: dict(valid=1, invalid={})}
  assert f"{chat}: 2 prompt records, invalid {{'malformed_json': 1}}" in lines
  assert out["sampled_prompts"] == 3 and set(out["by_domain"]) == {"arith", "gsm"}
  rows = [json.loads(x) for x in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
  assert len(rows) == 3 * config.eval.num_samples
  prompts = [f"{PROMPT} (0)", f"{PROMPT} (1)", "Start with 2. Add 2. What is the result?"]
  assert {r["prompt_id"] for r in rows} == {
      evaluation.prompt_id(Record(p, "", "", "", "0")) for p in prompts}
  # The reading config is part of what a resumed run must match.
  config.default_source = "mine"
  with pytest.raises(ValueError, match=r"another config \(changed: default_source\)"):
    eval_run.run(config, str(tmp_path / "eval"), log=lambda _: None)


def test_evaluate_cli_no_valid_prompt_is_one_line(params_dir, tmp_path):
  bad = _write_jsonl(tmp_path / "bad.jsonl", [{"messages": [USER]}])
  run = subprocess.run([sys.executable, "-m", "experiments.evaluate",
                        "--config=configs/evaluate.py:smoke", f"--workdir={tmp_path / 'w'}",
                        f"--config.checkpoint={params_dir}", f"--config.data={bad}"],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
  assert run.stderr.strip().splitlines()[-1] == (
      f"error: {bad}: no valid prompt record ({{'missing_answer_and_tests': 1}})")
