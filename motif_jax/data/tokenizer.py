"""Tokenizers: a byte-level default that needs no files, and any Hugging Face `tokenizer.json`.

Both expose `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size` and
`token_id(text) -> int | None` (the id of a string that is a single token, e.g. `</think>`).

`ByteTokenizer`: ids 0..255 are UTF-8 bytes, then one id per special token (the chat template's
tags), so the default template needs 256 + 7 = 263 ids and fits the tiny model's 512.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Protocol

from absl import logging

BYTES = 256
PAD = "<|pad|>"


class Tokenizer(Protocol):
  vocab_size: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def token_id(self, text: str) -> int | None: ...


class ByteTokenizer:
  """UTF-8 bytes plus whole special tokens; `special_tokens` fix the ids from 256 on, in order."""

  def __init__(self, special_tokens: Sequence[str]):
    self.special_tokens = tuple(dict.fromkeys((PAD, *special_tokens)))
    self._ids = {tok: BYTES + i for i, tok in enumerate(self.special_tokens)}
    # Longest first, so a special token that contains another is matched whole.
    alternation = "|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True))
    self._splitter = re.compile(f"({alternation})")
    self.vocab_size = BYTES + len(self.special_tokens)

  def encode(self, text: str) -> list[int]:
    ids: list[int] = []
    for i, piece in enumerate(self._splitter.split(text)):
      if i % 2:  # odd pieces are the captured special tokens
        ids.append(self._ids[piece])
      elif piece:
        ids.extend(piece.encode("utf-8"))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    out, buffer = [], bytearray()
    for i in ids:
      if i < BYTES:
        buffer.append(i)
        continue
      out.append(buffer.decode("utf-8", errors="replace"))
      buffer.clear()
      out.append(self.special_tokens[i - BYTES])
    out.append(buffer.decode("utf-8", errors="replace"))
    return "".join(out)

  def token_id(self, text: str) -> int | None:
    return self._ids.get(text)


class HFTokenizer:
  """A Hugging Face `tokenizers` tokenizer loaded from a local `tokenizer.json` (or the model
  directory holding it)."""

  def __init__(self, path: str):
    import tokenizers  # noqa: PLC0415 (only needed for real tokenizers)
    self.path = path
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
      raise ValueError(f"data.tokenizer={path!r}: no such tokenizer.json")
    self._tok = tokenizers.Tokenizer.from_file(file)
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    # The chat template adds the tags itself; the tokenizer's own BOS/EOS post-processing is off.
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(list(ids), skip_special_tokens=False)

  def token_id(self, text: str) -> int | None:
    return self._tok.token_to_id(text)

  def __getstate__(self):  # picklable for Grain worker processes
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])


def load_tokenizer(path: str | None, special_tokens: Sequence[str]) -> Tokenizer:
  """`path` ''/None -> ByteTokenizer(special_tokens); otherwise the tokenizer.json at `path` (a
  file, or a model directory holding one)."""
  if not path:
    return ByteTokenizer(special_tokens)
  tokenizer = HFTokenizer(path)
  split = [t for t in special_tokens if tokenizer.token_id(t) is None]
  if split:  # still works, but each tag costs several tokens and may merge with its neighbours
    logging.warning("%s has no single token for the template tags %s", path, split)
  return tokenizer
