"""Record parsing and the JSONL / Parquet / ArrayRecord readers: malformed input is counted."""

import dataclasses
import json

import pytest

from motif_jax.data import sources
from motif_jax.data.records import InvalidRecord, parse_record
from data_helpers import record

GOOD = dict(prompt="p", response="<think>\n1. x\n</think>\n\\boxed{3}", domain="arith",
            source="s", answer="3")


@pytest.mark.parametrize("raw, reason", [
    ("{not json", "malformed_json"),
    (b"\xff\xfe", "not_utf8"),
    ("[1, 2]", "not_an_object"),
    ({**GOOD, "prompt": ""}, "missing_prompt"),
    ({k: v for k, v in GOOD.items() if k != "source"}, "missing_source"),
    ({**GOOD, "response": 7}, "bad_type_response"),
    ({**GOOD, "answer": None}, "missing_answer_and_tests"),
    ({**GOOD, "answer": None, "tests": [1]}, "bad_type_tests"),
])
def test_parse_record_names_the_reason(raw, reason):
  with pytest.raises(InvalidRecord) as e:
    parse_record(raw)
  assert e.value.reason == reason


def test_parse_record_keeps_extra_fields_and_code_tests():
  r = parse_record(json.dumps({**GOOD, "answer": 3, "difficulty": 4}))
  assert (r.answer, r.meta, r.to_json()["difficulty"]) == ("3", {"difficulty": 4}, 4)
  code = parse_record({**GOOD, "domain": "code", "answer": None, "tests": "assert f(1) == 2"})
  assert code.tests == ("assert f(1) == 2",) and code.answer is None


def test_jsonl_malformed_lines_are_counted_not_fatal(tmp_path):
  path = tmp_path / "mixed.jsonl"
  lines = [json.dumps(GOOD), "{oops", "", json.dumps({**GOOD, "domain": None}),
           json.dumps({**GOOD, "prompt": "q"}), "[]"]
  path.write_text("\n".join(lines) + "\n")
  records, counts = sources.read_records([str(tmp_path / "*.jsonl")])
  assert [r.prompt for r in records] == ["p", "q"]  # the blank line is not an item
  assert counts[str(path)].to_json() == dict(
      valid=2, invalid={"malformed_json": 1, "missing_domain": 1, "not_an_object": 1})


def test_file_without_valid_records_is_an_error_naming_it(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text("{oops\n[]\n")
  with pytest.raises(ValueError, match=r"bad\.jsonl: no valid record"):
    sources.read_records([str(path)])
  with pytest.raises(FileNotFoundError, match="nothing_here"):
    sources.read_records([str(tmp_path / "nothing_here*.jsonl")])


@pytest.mark.parametrize("name", ["r.jsonl", "r.parquet", "r.array_record"])
def test_every_format_round_trips(tmp_path, name):
  originals = [record("<think>\n1. 1 + 2 = 3\n</think>\n\\boxed{3}"),
               record("<think>\nx\n</think>\n```py\nf\n```", domain="code", answer=None,
                      tests=("assert f() == 1",))]
  originals[0] = dataclasses.replace(originals[0], meta={"difficulty": 2})
  path = str(tmp_path / name)
  sources.write_records(path, originals)
  records, counts = sources.read_records([path])
  assert records == originals
  assert counts[path].valid == 2 and not counts[path].invalid


def test_parquet_rows_missing_fields_are_counted(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  path = tmp_path / "rows.parquet"
  pq.write_table(pa.Table.from_pylist([GOOD, {**GOOD, "response": None}]), path)
  records, counts = sources.read_records([str(path)])
  assert len(records) == 1 and counts[str(path)].to_json()["invalid"] == {"missing_response": 1}
