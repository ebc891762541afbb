"""Tokenizers: a byte-level default that needs no files, a word-level one for the toy corpus, and
any Hugging Face `tokenizer.json`.

All expose `encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size` and
`token_id(text) -> int | None` (the id of a string that is a single token, e.g. `</think>`).

`ByteTokenizer`: ids 0..255 are UTF-8 bytes, then one id per special token (the chat template's
tags), so the default template needs 256 + 7 = 263 ids and fits the tiny model's 512.

`WordTokenizer` (`data.tokenizer=toy`): the byte tokenizer's ids, then whole words and whole
numbers 0..max_number-1, each bare and with its leading space (` 17`, ` multiply`), as real
tokenizers keep short numbers and common words whole (Llama 3 splits numbers into groups of up
to three digits). Anything else falls back to bytes, so every text round-trips. A number is then
one token that the model copies from the prompt in one step, where bytes need a digit-by-digit
copy through a two-token marker (` with 17` -> `w i t h _ 1 7`): the tiny quickstart model learns
the first in minutes on a CPU and not the second (README, Quickstart).
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
        self._encode_plain(piece, ids)
    return ids

  def _encode_plain(self, text: str, ids: list[int]) -> None:
    """Append the ids of `text`, which holds no special token."""
    ids.extend(text.encode("utf-8"))

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


class WordTokenizer(ByteTokenizer):
  """Bytes and special tokens as `ByteTokenizer`, then `words` and the numbers 0..max_number-1,
  each bare and after one space. A word is a run of ASCII letters, a number a run of digits
  without a leading zero (`0` itself included); a run not in the vocabulary is spelled in bytes."""

  _PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]+")

  def __init__(self, special_tokens: Sequence[str], words: Sequence[str], max_number: int):
    super().__init__(special_tokens)
    self.words, self.max_number = tuple(dict.fromkeys(words)), max_number
    pieces = [*self.words, *map(str, range(max_number))]
    self._pieces = tuple(p for w in pieces for p in (w, " " + w))
    self._piece_ids = {p: self.vocab_size + i for i, p in enumerate(self._pieces)}
    self._strings = ([bytes([b]) for b in range(BYTES)]
                     + [t.encode("utf-8") for t in self.special_tokens]
                     + [p.encode("utf-8") for p in self._pieces])
    self.vocab_size += len(self._pieces)

  def _encode_plain(self, text: str, ids: list[int]) -> None:
    end = 0
    for match in self._PIECE.finditer(text):
      ids.extend(text[end:match.start()].encode("utf-8"))
      piece, end = match.group(), match.end()
      if piece in self._piece_ids:
        ids.append(self._piece_ids[piece])
      elif piece[0] == " " and piece[1:] in self._piece_ids:
        ids.extend((ord(" "), self._piece_ids[piece[1:]]))
      else:
        ids.extend(piece.encode("utf-8"))
    ids.extend(text[end:].encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    return b"".join(self._strings[i] for i in ids).decode("utf-8", errors="replace")

  def token_id(self, text: str) -> int | None:
    return self._ids.get(text, self._piece_ids.get(text))


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


def check_fits(tokenizer: Tokenizer, vocab_size: int, tokenizer_field: str,
               model_field: str = "model.vocab_size") -> None:
  """A clear error where the tokenizer has ids the model has no embedding row for (an
  out-of-range id would otherwise be clamped silently by the embedding gather)."""
  if tokenizer.vocab_size > vocab_size:
    raise ValueError(f"{model_field}={vocab_size} is smaller than the {tokenizer.vocab_size} ids "
                     f"of {tokenizer_field} (ids >= {vocab_size} have no embedding row): raise "
                     f"{model_field} or use the model's own tokenizer")


TOY = "toy"  # data.tokenizer value of the toy corpus's WordTokenizer


def load_tokenizer(path: str | None, special_tokens: Sequence[str]) -> Tokenizer:
  """`path` ''/None -> ByteTokenizer(special_tokens); `toy` -> the toy corpus's WordTokenizer;
  otherwise the tokenizer.json at `path` (a file, or a model directory holding one)."""
  if not path:
    return ByteTokenizer(special_tokens)
  if path == TOY:
    from motif_jax.data import toy_vocabulary  # noqa: PLC0415 (imports the toy generator)
    return WordTokenizer(special_tokens, toy_vocabulary.words(), toy_vocabulary.MAX_NUMBER)
  tokenizer = HFTokenizer(path)
  split = [t for t in special_tokens if tokenizer.token_id(t) is None]
  if split:  # still works, but each tag costs several tokens and may merge with its neighbours
    logging.warning("%s has no single token for the template tags %s", path, split)
  return tokenizer
