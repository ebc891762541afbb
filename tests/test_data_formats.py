"""Record formats (motif_jax/data/formats.py): chat messages, prompt/completion, mapped flat
fields -> one Record; parse-error counters; one-line CLI errors for unusable inputs."""

import json
import subprocess
import sys

import pytest

from motif_jax.data import formats, sources
from data_helpers import small_config

THINK = "<think>\n1. 1 + 2 = 3\n</think>\n\\boxed{3}"
PROMPT = "Start with 1. Add 2. What is the result?"
# What every file below must read as: the project's own record shape.
NATIVE = dict(prompt=PROMPT, response=THINK, domain="arith", source="teacher", answer="3",
              difficulty=2)


def _write_jsonl(path, items):
  path.write_text("".join(json.dumps(item) + "\n" for item in items))
  return str(path)


def _read(path, cfg=None):
  spec = formats.NATIVE if cfg is None else formats.read_spec(cfg)
  return sources.read_records([path], spec)


def _meta(**extra):
  return {"domain": "arith", "source": "teacher", "answer": 3, "difficulty": 2, **extra}


SAME_RECORD = {
    "native": NATIVE,
    # Chat turns, the reasoning in the assistant's own field (DeepSeek / Qwen style).
    "messages_reasoning_content": {"messages": [
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "\\boxed{3}", "reasoning_content": "1. 1 + 2 = 3"}],
        **_meta()},
    # The think block already inside the content; content given as text parts.
    "messages_inline_think_parts": {"messages": [
        {"role": "user", "content": [{"type": "text", "text": PROMPT}]},
        {"role": "assistant", "content": THINK}], **_meta()},
    "prompt_completion": {"prompt": PROMPT, "completion": THINK, **_meta()},
    "prompt_completion_reasoning": {"prompt": PROMPT, "completion": "\\boxed{3}",
                                    "reasoning": "1. 1 + 2 = 3", **_meta()},
    "prompt_completion_conversational": {
        "prompt": [{"role": "user", "content": PROMPT}],
        "completion": [{"role": "assistant", "content": "\\boxed{3}", "reasoning": "1. 1 + 2 = 3"}],
        **_meta()},
}


@pytest.mark.parametrize("name", sorted(SAME_RECORD))
def test_every_format_reads_as_the_same_record(tmp_path, name):
  expected = _read(_write_jsonl(tmp_path / "native.jsonl", [NATIVE]))[0]
  records, counts = _read(_write_jsonl(tmp_path / f"{name}.jsonl", [SAME_RECORD[name]]))
  assert records == expected and list(counts.values())[0].valid == 1
  assert expected[0].meta == {"difficulty": 2}


def test_messages_system_turns_are_kept_and_parquet_reads_like_jsonl(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  item = {"messages": [{"role": "system", "content": "Be brief."},
                       {"role": "developer", "content": "Box it."},
                       {"role": "user", "content": PROMPT},
                       {"role": "assistant", "content": "\\boxed{3}",
                        "reasoning_content": "1. 1 + 2 = 3"}], "answer": "3"}
  pq.write_table(pa.Table.from_pylist([item]), tmp_path / "chat.parquet")
  from_parquet = _read(str(tmp_path / "chat.parquet"))[0]
  from_jsonl = _read(_write_jsonl(tmp_path / "chat.jsonl", [item]))[0]
  assert from_parquet == from_jsonl
  (r,) = from_jsonl
  assert (r.prompt, r.response, r.meta) == (PROMPT, THINK, {"system": "Be brief.\n\nBox it."})
  # domain and source default to the file name's stem when the item has neither
  assert (r.domain, r.source) == ("chat", "chat")


def test_think_markers_come_from_the_template(tmp_path):
  cfg = small_config(template=dict(think_open="<reason>", think_close="</reason>"))
  item = {"prompt": PROMPT, "completion": "\\boxed{3}", "reasoning": "1. 1 + 2 = 3", "answer": 3}
  (r,), _ = _read(_write_jsonl(tmp_path / "x.jsonl", [item]), cfg)
  assert r.response == "<reason>\n1. 1 + 2 = 3\n</reason>\n\\boxed{3}"


def test_math_and_code_sets_through_field_mappings(tmp_path):
  math = _write_jsonl(tmp_path / "gsm.jsonl", [
      {"problem": PROMPT, "solution": THINK, "answer": 3, "level": "easy"}])
  cfg = small_config(inputs=math, fields=dict(prompt="problem", response="solution"),
                     default_domain="arith")
  (r,), _ = _read(math, cfg)
  assert r == _read(_write_jsonl(tmp_path / "n.jsonl", [
      {**NATIVE, "source": "gsm", "difficulty": None, "level": "easy"}]))[0][0]

  code = _write_jsonl(tmp_path / "apps.jsonl", [
      {"question": "Write f.", "answer_text": "<think>\n1. return 1\n</think>\n```py\nf\n```",
       "test_cases": ["assert f() == 1", "assert f() != 2"], "category": "code",
       "origin": "apps-v2"}])
  cfg = small_config(inputs=code, fields=dict(prompt="question", response="answer_text",
                                              tests="test_cases", domain="category",
                                              source="origin"))
  (r,), _ = _read(code, cfg)
  assert (r.prompt, r.tests, r.domain, r.source, r.answer, r.meta) == (
      "Write f.", ("assert f() == 1", "assert f() != 2"), "code", "apps-v2", None, {})
  # The same file without the mapping: every line misses the prompt field, counted by its name.
  with pytest.raises(ValueError, match=r"apps\.jsonl: no valid record \({'missing_prompt': 1}\)"):
    _read(code)


def test_config_defaults_and_explicit_format_override(tmp_path):
  path = _write_jsonl(tmp_path / "mixed.jsonl", [
      {"prompt": PROMPT, "response": THINK, "answer": "3"},
      {"messages": [{"role": "user", "content": PROMPT},
                    {"role": "assistant", "content": THINK}], "answer": "3", "source": "s"}])
  records, _ = _read(path, small_config(default_domain="arith", default_source="mine"))
  assert [(r.domain, r.source) for r in records] == [("arith", "mine"), ("arith", "s")]
  # data.format forces one reader: the other line is then counted, not guessed.
  records, counts = _read(path, small_config(format="messages"))
  assert len(records) == 1 and counts[path].invalid == {"missing_messages": 1}
  records, counts = _read(path, small_config(format="record"))
  assert len(records) == 1 and counts[path].invalid == {"missing_prompt": 1}


def test_malformed_items_are_counted_by_reason(tmp_path):
  user = {"role": "user", "content": PROMPT}
  bot = {"role": "assistant", "content": THINK}
  lines = [json.dumps(x) for x in [
      {"messages": [user, bot], "answer": "3"},  # valid
      {"messages": [user, bot, user, bot], "answer": "3"},  # multi_turn
      {"messages": [user], "answer": "3"},  # missing_assistant
      {"messages": [{"role": "system", "content": "s"}, bot], "answer": "3"},  # missing_user
      {"messages": [user, {"role": "system", "content": "s"}, bot], "answer": "3"},
      {"messages": [user, {"role": "tool", "content": "x"}, bot], "answer": "3"},
      {"messages": [{"role": "user", "content": [{"type": "image"}]}, bot], "answer": "3"},
      {"messages": "hi", "answer": "3"},  # bad_type_messages
      {"messages": [user, bot]},  # missing_answer_and_tests
      {"prompt": PROMPT, "completion": THINK, "tests": [1]},  # bad_type_tests
      {"prompt": PROMPT, "completion": "", "answer": "3"},  # missing_completion
      {"prompt": PROMPT, "response": THINK, "answer": "3", "domain": 7},  # bad_type_domain
  ]] + ["{oops", "[1]"]
  path = tmp_path / "bad.jsonl"
  path.write_text("\n".join(lines) + "\n\n")
  records, counts = _read(str(path))
  assert len(records) == 1
  assert counts[str(path)].to_json() == dict(valid=1, invalid={
      "bad_type_domain": 1, "bad_type_messages": 1, "bad_type_tests": 1, "malformed_json": 1,
      "missing_answer_and_tests": 1, "missing_assistant": 1, "missing_completion": 1,
      "missing_user": 1, "multi_turn": 1, "non_text_content": 1, "not_an_object": 1,
      "system_after_user": 1, "unknown_role": 1})


def test_a_directory_input_is_named(tmp_path):
  with pytest.raises(ValueError, match="is a directory: name its files"):
    sources.expand_paths([str(tmp_path)])


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"data\.format='xml' must be one of"):
    small_config(format="xml")
  with pytest.raises(ValueError, match=r"data\.fields\.prompt must name an input field"):
    small_config(fields=dict(prompt=""))


def _cli(*args):
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                        timeout=120)


def _assert_one_line_error(run, *needles):
  assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr[-2000:]
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and all(n in last for n in needles), last


@pytest.mark.parametrize("case", ["missing", "empty", "no_valid"])
def test_filter_data_unusable_input_is_one_line(tmp_path, case):
  path = {"missing": tmp_path / "nope.jsonl", "empty": tmp_path / "empty.jsonl",
          "no_valid": tmp_path / "bad.jsonl"}[case]
  (tmp_path / "empty.jsonl").write_text("\n")
  (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{oops\n')
  run = _cli("experiments.filter_data", "--config=configs/data.py:smoke",
             f"--config.data.inputs={path}", f"--workdir={tmp_path / 'out'}")
  needles = {"missing": ("no file matches", "nope.jsonl"),
             "empty": ("empty.jsonl: no valid record (the file is empty)",),
             "no_valid": ("bad.jsonl: no valid record", "'missing_response': 1",
                          "'malformed_json': 1")}[case]
  _assert_one_line_error(run, *needles)


@pytest.mark.parametrize("case", ["missing", "no_valid_lazy"])
def test_sft_unusable_input_is_one_line(tmp_path, case):
  """A missing file (curated on load), and a file read lazily per process with no valid line."""
  (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{oops\n')
  flags = {"missing": [f"--config.data.inputs={tmp_path / 'nope.jsonl'}"],
           "no_valid_lazy": [f"--config.data.inputs={tmp_path / 'bad.jsonl'}",
                             "--config.data.filter_on_load=False"]}[case]
  run = _cli("experiments.sft", "--config=configs/sft.py:smoke", *flags,
             f"--workdir={tmp_path / 'w'}")
  needles = {"missing": ("no file matches", "nope.jsonl"),
             "no_valid_lazy": ("process 0 of 1 has no valid record",)}[case]
  _assert_one_line_error(run, *needles)


def test_the_issue_users_file_is_accepted_by_filter_data(tmp_path):
  """The example of issue 21: no domain, no source; it was rejected as missing_domain."""
  path = tmp_path / "mine.jsonl"
  path.write_text('{"prompt": "What is 2+2?", "response": "<think>2+2=4</think>\\\\boxed{4}", '
                  '"answer": "4"}\n')
  run = _cli("experiments.filter_data", "--config=configs/data.py:smoke",
             f"--config.data.inputs={path}", "--config.data.filters.order=format,verify",
             f"--workdir={tmp_path / 'out'}")
  assert run.returncode == 0, run.stderr[-2000:]
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report["inputs"][str(path)] == dict(valid=1, invalid={})
  kept = [json.loads(x) for x in (tmp_path / "out" / "kept.jsonl").read_text().splitlines()]
  assert kept == [dict(prompt="What is 2+2?", response="<think>2+2=4</think>\\boxed{4}",
                       domain="mine", source="mine", answer="4")]
