"""Record files: JSONL, Parquet and ArrayRecord (one JSON object per record, UTF-8).

`read_records` parses every file eagerly in this process, so malformed items are counted per file
and reason (`ParseCounts`) instead of crashing a run; a file that yields no valid record at all is
an error that names the file. The format is chosen by extension: `.jsonl`, `.parquet`,
`.array_record` (or `.arrayrecord`).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from motif_jax.data.records import InvalidRecord, ParseCounts, Record, parse_record

JSONL = (".jsonl",)
PARQUET = (".parquet",)
ARRAY_RECORD = (".array_record", ".arrayrecord")


def expand_paths(patterns: Sequence[str]) -> list[str]:
  """Paths and globs -> sorted existing files; a pattern that matches nothing raises."""
  paths = []
  for pattern in patterns:
    matched = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matched:
      raise FileNotFoundError(f"no file matches {pattern!r}")
    paths.extend(matched)
  return paths


def _format(path: str) -> str:
  for name, suffixes in (("jsonl", JSONL), ("parquet", PARQUET), ("array_record", ARRAY_RECORD)):
    if path.endswith(suffixes):
      return name
  raise ValueError(f"{path}: unknown record format; use one of "
                   f"{JSONL + PARQUET + ARRAY_RECORD}")


def iter_raw(path: str) -> Iterator[str | bytes | dict[str, Any]]:
  """Raw items of one file: JSONL lines (blank lines skipped), Parquet rows, ArrayRecord bytes."""
  kind = _format(path)
  if kind == "jsonl":
    with open(path, "rb") as f:  # bytes: bad UTF-8 is counted per line by parse_record
      for line in f:
        if line.strip():
          yield line
  elif kind == "parquet":
    import pyarrow.parquet as pq  # noqa: PLC0415 (optional heavy import)
    yield from pq.read_table(path).to_pylist()
  else:
    from grain.sources import ArrayRecordDataSource  # noqa: PLC0415
    source = ArrayRecordDataSource([path])
    for i in range(len(source)):
      yield source[i]


def read_file(path: str) -> tuple[list[Record], ParseCounts]:
  """All valid records of one file and the count of invalid ones by reason."""
  records, counts = [], ParseCounts()
  for raw in iter_raw(path):
    try:
      records.append(parse_record(raw))
    except InvalidRecord as e:
      counts.invalid[e.reason] += 1
  counts.valid = len(records)
  if not records:
    found = dict(counts.invalid) or "the file is empty"
    raise ValueError(f"{path}: no valid record ({found})")
  return records, counts


def read_records(patterns: Sequence[str]) -> tuple[list[Record], dict[str, ParseCounts]]:
  """Records of every file matched by `patterns`, in order, with per-file parse counts."""
  records, counts = [], {}
  for path in expand_paths(patterns):
    file_records, counts[path] = read_file(path)
    records.extend(file_records)
  return records, counts


def write_records(path: str, records: Sequence[Record]) -> None:
  """Write records in the format given by the extension (atomically: temp file + rename)."""
  kind = _format(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp"
  rows = [r.to_json() for r in records]
  if kind == "parquet":  # one schema for all rows: absent fields become nulls
    keys = list(dict.fromkeys(k for row in rows for k in row))
    rows = [{k: row.get(k) for k in keys} for row in rows]
  if kind == "jsonl":
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
  elif kind == "parquet":
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415
    pq.write_table(pa.Table.from_pylist(rows), tmp)
  else:
    from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415
    writer = ArrayRecordWriter(tmp, "group_size:1")
    for row in rows:
      writer.write(json.dumps(row, ensure_ascii=False).encode("utf-8"))
    writer.close()
  os.replace(tmp, path)
