"""Record files: JSONL, Parquet and ArrayRecord (one JSON object per record, UTF-8).

The file type is chosen by extension: `.jsonl`, `.parquet`, `.array_record` (or `.arrayrecord`);
each item is read in one of the record formats of `formats.py` (chat messages, prompt/completion,
flat fields) under a `formats.ReadSpec`.

Two ways to read:
- `read_records` parses every item of every file eagerly in this process, so malformed items are
  counted per file and reason (`ParseCounts`) instead of crashing a run; a file that yields no
  valid record at all is an error that names the file. Curation (`experiments.filter_data`,
  `data.filter_on_load`) reads this way: dedup and the style profile need all records.
- `lazy_records` indexes a file without parsing it (JSONL: the byte offsets of its lines, found by
  scanning for newlines; Parquet: the row count; ArrayRecord: its own index) and parses an item
  only when it is asked for. A multi-host SFT run slices that index per process, so each process
  parses only its own records (`pipeline.build_sft_dataset`).
"""

from __future__ import annotations

import functools
import glob
import json
import os
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from motif_jax.data import formats
from motif_jax.data.records import InvalidRecord, ParseCounts, Record

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
    for path in matched:
      if os.path.isdir(path):
        raise ValueError(f"{path} is a directory: name its files (e.g. {path}/*.jsonl)")
    paths.extend(matched)
  return paths


def _format(path: str) -> str:
  for name, suffixes in (("jsonl", JSONL), ("parquet", PARQUET), ("array_record", ARRAY_RECORD)):
    if path.endswith(suffixes):
      return name
  raise ValueError(f"{path}: unknown file type; use one of "
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


def read_file(path: str, spec: formats.ReadSpec = formats.NATIVE
              ) -> tuple[list[Record], ParseCounts]:
  """All valid records of one file and the count of invalid ones by reason."""
  records, counts, stem = [], ParseCounts(), formats.stem(path)
  for raw in iter_raw(path):
    try:
      records.append(formats.to_record(raw, spec, stem=stem))
    except InvalidRecord as e:
      counts.invalid[e.reason] += 1
  counts.valid = len(records)
  if not records:
    found = dict(counts.invalid) or "the file is empty"
    raise ValueError(f"{path}: no valid {'prompt ' if spec.prompt_only else ''}record ({found})")
  return records, counts


def read_records(patterns: Sequence[str], spec: formats.ReadSpec = formats.NATIVE
                 ) -> tuple[list[Record], dict[str, ParseCounts]]:
  """Records of every file matched by `patterns`, in order, with per-file parse counts."""
  records, counts = [], {}
  for path in expand_paths(patterns):
    file_records, counts[path] = read_file(path, spec)
    records.extend(file_records)
  return records, counts


# ---- Lazy reading: index first, parse on access ------------------------------------------------

_SCAN_BYTES = 16 << 20  # newline scan chunk


def line_spans(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(start, end) byte offsets of the non-empty lines of a file, by scanning for newlines only
  (no decoding, no parsing); `end` excludes the newline."""
  newlines, size = [], 0
  with open(path, "rb") as f:
    while chunk := f.read(_SCAN_BYTES):
      newlines.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n")) + size)
      size += len(chunk)
  ends = np.concatenate([*newlines, np.array([size], np.int64)]).astype(np.int64)
  starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
  keep = ends > starts  # empty lines (and the empty tail after a final newline) are no items
  return starts[keep], ends[keep]


class JsonlLines(grain.sources.RandomAccessDataSource):
  """The raw lines of a JSONL file by index (bytes), read with `os.pread` from a line index.

  Picklable (Grain workers): the open file is not part of the state and reopens on first use.
  """

  def __init__(self, path: str):
    self.path = path
    self.starts, self.ends = line_spans(path)
    self._fd = None

  def __len__(self) -> int:
    return len(self.starts)

  def __getitem__(self, index: int) -> bytes:
    if self._fd is None:
      self._fd = os.open(self.path, os.O_RDONLY)
      weakref.finalize(self, os.close, self._fd)
    start, end = int(self.starts[index]), int(self.ends[index])
    return os.pread(self._fd, end - start, start)

  def __getstate__(self):
    return {**self.__dict__, "_fd": None}


class ParquetRows(grain.sources.RandomAccessDataSource):
  """The rows of a Parquet file by index; the row count comes from the footer, the (memory-mapped)
  table is opened on first access and a row becomes a Python dict only when asked for."""

  def __init__(self, path: str):
    import pyarrow.parquet as pq  # noqa: PLC0415
    self.path = path
    self.num_rows = pq.ParquetFile(path).metadata.num_rows
    self._table = None

  def __len__(self) -> int:
    return self.num_rows

  def __getitem__(self, index: int) -> dict[str, Any]:
    if self._table is None:
      import pyarrow.parquet as pq  # noqa: PLC0415
      self._table = pq.read_table(self.path, memory_map=True)
    return self._table.slice(index, 1).to_pylist()[0]

  def __getstate__(self):
    return {**self.__dict__, "_table": None}


def parse_or_none(raw: str | bytes | dict[str, Any], *, spec: formats.ReadSpec,
                  stem: str) -> Record | None:
  """A Record, or None for a blank or invalid item (Grain skips None elements)."""
  if isinstance(raw, bytes) and not raw.strip():
    return None
  try:
    return formats.to_record(raw, spec, stem=stem)
  except InvalidRecord:
    return None


def lazy_records(path: str, spec: formats.ReadSpec = formats.NATIVE) -> grain.MapDataset:
  """One file as a MapDataset of its items, each parsed when accessed (None when invalid).

  Only the index is built here; an empty file is an error that names it. Invalid items are
  skipped, not counted: run `experiments.filter_data` to see them counted by reason.
  """
  kind = _format(path)
  if kind == "jsonl":
    raw = JsonlLines(path)
  elif kind == "parquet":
    raw = ParquetRows(path)
  else:
    raw = grain.sources.ArrayRecordDataSource([path])
  if not len(raw):
    raise ValueError(f"{path}: no valid record (the file is empty)")
  parse = functools.partial(parse_or_none, spec=spec, stem=formats.stem(path))
  return grain.MapDataset.source(raw).map(parse)


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
