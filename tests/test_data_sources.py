"""Record parsing and the JSONL / Parquet / ArrayRecord readers: malformed input is counted;
the lazy per-process readers parse only the records of their process's shard."""

import dataclasses
import json
import pickle

import numpy as np
import pytest

from motif_jax.data import curate, formats, pipeline, sources
from motif_jax.data.records import InvalidRecord, parse_record
from data_helpers import record, small_config

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
  lines = [json.dumps(GOOD), "{oops", "", json.dumps({**GOOD, "response": None}),
           json.dumps({**GOOD, "prompt": "q", "domain": None}), "[]"]
  path.write_text("\n".join(lines) + "\n")
  records, counts = sources.read_records([str(tmp_path / "*.jsonl")])
  assert [r.prompt for r in records] == ["p", "q"]  # the blank line is not an item
  assert records[1].domain == "mixed"  # no domain: the file name's stem
  assert counts[str(path)].to_json() == dict(
      valid=2, invalid={"malformed_json": 1, "missing_response": 1, "not_an_object": 1})


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


# ---- Lazy, per-process reading ------------------------------------------------------------------


def _lines(n: int) -> list[str]:
  """n valid records (prompt i), with invalid and blank lines mixed in."""
  out = []
  for i in range(n):
    out.append(json.dumps({**GOOD, "prompt": f"q{i}"}))
    if i % 7 == 3:
      out += ["{oops", "", "  ", json.dumps({**GOOD, "answer": None})]
  return out


def test_line_spans_scan_newlines_only(tmp_path, monkeypatch):
  path = tmp_path / "x.jsonl"
  path.write_bytes(b'{"a": 1}\n\n{"b": 22}\r\n\n\n{"c": 3}')  # no final newline, CRLF kept
  monkeypatch.setattr(sources, "_SCAN_BYTES", 4)  # lines across chunk boundaries
  starts, ends = sources.line_spans(str(path))
  np.testing.assert_array_equal(starts, [0, 10, 23])
  np.testing.assert_array_equal(ends, [8, 20, 31])
  lines = sources.JsonlLines(str(path))
  assert [lines[i] for i in range(3)] == [b'{"a": 1}', b'{"b": 22}\r', b'{"c": 3}']
  again = pickle.loads(pickle.dumps(lines))  # Grain workers receive the source pickled
  assert again[2] == b'{"c": 3}' and again._fd is not None and lines._fd is not None


@pytest.mark.parametrize("name", ["r.jsonl", "r.parquet", "r.array_record"])
def test_lazy_records_equal_the_eager_reader(tmp_path, name):
  path = str(tmp_path / name)
  if name.endswith(".jsonl"):
    (tmp_path / name).write_text("\n".join(_lines(20)) + "\n")
  else:
    sources.write_records(path, [formats.to_record(x, formats.NATIVE, stem="r")
                                 for x in _lines(20) if x.strip() and "oops" not in x
                                 and '"answer": null' not in x])
  eager = sources.read_records([path])[0]
  lazy = sources.lazy_records(path)
  assert [r for r in (lazy[i] for i in range(len(lazy))) if r is not None] == eager
  assert len(eager) == 20


def _count_parses(monkeypatch) -> list:
  """Monkeypatch formats.to_record to record every item it parses."""
  parsed, to_record = [], formats.to_record

  def counting(raw, spec, *, stem):
    parsed.append(raw)
    return to_record(raw, spec, stem=stem)

  monkeypatch.setattr(formats, "to_record", counting)
  return parsed


def _cfg(tmp_path, lines, **data):
  path = tmp_path / "in.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return small_config(inputs=str(path), filter_on_load=False, seq_len=256, global_batch_size=2,
                      **data), str(path)


def _build(cfg, index, count, **kwargs):
  return pipeline.build_sft_dataset(
      pipeline.process_inputs(cfg), tokenizer=curate.make_tokenizer(cfg), template=cfg.template,
      seq_len=cfg.seq_len, global_batch_size=cfg.global_batch_size, seed=cfg.seed, shuffle=True,
      num_epochs=kwargs.pop("num_epochs", 1), packing_bins=2, process_index=index,
      process_count=count, workers=0, worker_buffer=1, prefetch=1, **kwargs)


def test_a_process_parses_only_its_shard_and_the_shards_cover_the_data(tmp_path, monkeypatch):
  lines = _lines(40)
  cfg, path = _cfg(tmp_path, lines)
  items = [x for x in lines if x]  # what the line index holds (empty lines are no items)
  parsed = _count_parses(monkeypatch)
  ds = _build(cfg, 1, 2)
  it = iter(ds)
  try:
    batches = list(it)  # one whole epoch of process 1's shard, tokenized and packed
  finally:
    it.close()
  assert batches
  shard = [x.encode() for x in items[1::2] if x.strip()]  # whitespace lines: skipped unparsed
  # Each item of its shard once, plus the first one again (the "has a valid record" check);
  # nothing of process 0's shard.
  assert len(parsed) == len(shard) + 1 and sorted(parsed) == sorted(shard + [shard[0]])
  assert len(parsed) < 0.6 * len(items)
  # The two shards (each read lazily as a process would) are disjoint and together hold exactly
  # what the eager single-process reader returns.
  shards = [[r for r in pipeline.process_inputs(cfg)[i::2]] for i in range(2)]
  eager = sources.read_records([path])[0]
  assert not {r.prompt for r in shards[0]} & {r.prompt for r in shards[1]}
  assert sorted(shards[0] + shards[1], key=lambda r: r.prompt) == sorted(
      eager, key=lambda r: r.prompt)


def test_lazy_pipeline_resumes_exactly_from_its_iterator_state(tmp_path):
  cfg, _ = _cfg(tmp_path, _lines(24))
  it = iter(_build(cfg, 0, 2, num_epochs=0))
  try:
    for _ in range(2):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(6)]  # crosses the epoch boundary
  finally:
    it.close()
  resumed = iter(_build(cfg, 0, 2, num_epochs=0))
  try:
    resumed.set_state(state)
    for a, b in zip([next(resumed) for _ in range(6)], expected):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])
  finally:
    resumed.close()


def test_lazy_inputs_errors_name_the_file_or_the_process(tmp_path):
  (tmp_path / "empty.jsonl").write_text("\n\n")
  with pytest.raises(ValueError, match=r"empty\.jsonl: no valid record \(the file is empty\)"):
    sources.lazy_records(str(tmp_path / "empty.jsonl"))
  cfg, _ = _cfg(tmp_path, [json.dumps(GOOD), "{oops"])
  _build(cfg, 0, 2)
  with pytest.raises(ValueError, match="process 1 of 2 has no valid record"):
    _build(cfg, 1, 2)


def test_toy_and_file_inputs_concatenate_in_order(tmp_path):
  cfg, path = _cfg(tmp_path, [json.dumps(GOOD)] * 3)
  cfg = dataclasses.replace(cfg, inputs=(path, "toy:aligned", path))
  toy = curate.load_inputs(("toy:aligned",), cfg.toy)[0]
  inputs = pipeline.process_inputs(cfg)
  assert [inputs[i] for i in range(len(inputs))] == [
      *sources.read_records([path])[0], *toy, *sources.read_records([path])[0]]
