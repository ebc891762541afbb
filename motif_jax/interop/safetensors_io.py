"""Streaming safetensors I/O: index a single or sharded checkpoint, read slices, write shards.

Reads touch only the bytes of the requested slice (`safe_open(..., framework="numpy")` and
`get_slice`; bfloat16, which numpy cannot name, through a read-only memmap of the raw bytes viewed
as `ml_dtypes.bfloat16`). Writes produce one tensor at a time, so host memory holds at most one
tensor. File format: 8-byte little-endian header length, a JSON header of
`{name: {dtype, shape, data_offsets}}`, then the raw row-major data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
             "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
             "BOOL": np.bool_}
ST_DTYPES = {np.dtype(v): k for k, v in NP_DTYPES.items()}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  file: Path
  dtype: str  # safetensors code, e.g. "BF16"
  shape: tuple[int, ...]
  offset: int  # absolute byte offset of the tensor's data in `file`


def _read_header(file: Path) -> tuple[dict, int]:
  with open(file, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    return json.loads(f.read(size)), 8 + size


def index_checkpoint(directory: Path) -> dict[str, TensorInfo]:
  """Name -> `TensorInfo` over `model.safetensors` or the files of its sharded index."""
  directory = Path(directory)
  if (directory / INDEX_FILE).exists():
    weight_map = json.loads((directory / INDEX_FILE).read_text())["weight_map"]
    files = sorted({directory / f for f in weight_map.values()})
  elif (directory / SINGLE_FILE).exists():
    weight_map, files = None, [directory / SINGLE_FILE]
  else:
    raise FileNotFoundError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} exists")
  infos = {}
  for file in files:
    header, data_start = _read_header(file)
    for name, meta in header.items():
      if name != "__metadata__":
        infos[name] = TensorInfo(file, meta["dtype"], tuple(meta["shape"]),
                                 data_start + meta["data_offsets"][0])
  if weight_map is not None:
    absent = sorted(n for n, f in weight_map.items()
                    if n not in infos or infos[n].file != directory / f)
    if absent:
      raise ValueError(f"{directory / INDEX_FILE} lists tensors missing from their files: "
                       f"{', '.join(absent[:10])}")
  return infos


def read_slice(info: TensorInfo, name: str, index: tuple[slice, ...]) -> np.ndarray:
  """`tensor[index]` read from disk, without loading the rest of the tensor."""
  if info.dtype == "BF16":
    # safe_open(framework="numpy") refuses bfloat16; a memmap reads only the slice's pages.
    mapped = np.memmap(info.file, dtype=ml_dtypes.bfloat16, mode="r", offset=info.offset,
                       shape=info.shape)
    return np.array(mapped[index])
  with safe_open(str(info.file), framework="numpy") as f:
    return f.get_slice(name)[index]


@dataclasses.dataclass(frozen=True)
class PendingTensor:
  """A tensor to write: its header entry now, its data from `produce()` when written."""

  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  produce: Callable[[], np.ndarray]

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def plan_shards(tensors: Sequence[PendingTensor],
                max_shard_bytes: int) -> list[list[PendingTensor]]:
  """Greedy split in order; a tensor larger than the limit gets a shard of its own."""
  shards: list[list[PendingTensor]] = [[]]
  size = 0
  for t in tensors:
    if shards[-1] and size + t.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += t.nbytes
  return shards


def write_file(file: Path, tensors: Sequence[PendingTensor]) -> None:
  """One safetensors file, written to a temporary name and renamed when complete."""
  header, offset = {"__metadata__": {"format": "pt"}}, 0
  for t in tensors:
    header[t.name] = {"dtype": ST_DTYPES[np.dtype(t.dtype)], "shape": list(t.shape),
                      "data_offsets": [offset, offset + t.nbytes]}
    offset += t.nbytes
  header_bytes = json.dumps(header, separators=(",", ":")).encode()
  header_bytes += b" " * (-len(header_bytes) % 8)  # data starts 8-byte aligned
  tmp = file.with_name(file.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(len(header_bytes).to_bytes(8, "little"))
    f.write(header_bytes)
    for t in tensors:
      data = np.ascontiguousarray(t.produce(), dtype=t.dtype)
      if data.shape != tuple(t.shape):
        raise ValueError(f"tensor {t.name}: produced shape {data.shape}, declared {t.shape}")
      f.write(data.tobytes())
  os.replace(tmp, file)


def write_checkpoint(directory: Path, tensors: Sequence[PendingTensor],
                     max_shard_bytes: int) -> list[Path]:
  """`model.safetensors`, or `model-0000i-of-0000n.safetensors` plus the index json.

  Earlier safetensors files and index in `directory` are removed first so none is left stale.
  """
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for old in [*directory.glob("model*.safetensors"), directory / INDEX_FILE]:
    old.unlink(missing_ok=True)
  shards = plan_shards(tensors, max_shard_bytes)
  if len(shards) == 1:
    write_file(directory / SINGLE_FILE, shards[0])
    return [directory / SINGLE_FILE]
  files = [directory / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
           for i in range(len(shards))]
  for file, shard in zip(files, shards):
    write_file(file, shard)
  index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
           "weight_map": {t.name: file.name for file, shard in zip(files, shards) for t in shard}}
  (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
  return files
