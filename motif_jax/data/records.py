"""The training record and its parsing, with malformed input reported by reason, never raised.

A record is `{prompt, response, domain, source}` plus a reference `answer` and/or code `tests`.
`response` holds a `<think>…</think>` block followed by the final answer. Any other fields are
kept in `meta` (for example the toy corpus's `difficulty` and `teacher`) and written back out.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Mapping
from typing import Any

REQUIRED_TEXT = ("prompt", "response", "domain", "source")
RESERVED = (*REQUIRED_TEXT, "answer", "tests")  # Record fields: never kept in `meta`


@dataclasses.dataclass(frozen=True)
class Record:
  prompt: str
  response: str
  domain: str  # e.g. math, code, arith, lists
  source: str  # where the trace came from (teacher, data set)
  answer: str | None = None  # reference final answer (math / toy domains)
  tests: tuple[str, ...] = ()  # unit tests for code records (run by the RL sandbox, not here)
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    out = dict(self.meta)
    out.update(prompt=self.prompt, response=self.response, domain=self.domain, source=self.source)
    if self.answer is not None:
      out["answer"] = self.answer
    if self.tests:
      out["tests"] = list(self.tests)
    return out


class InvalidRecord(ValueError):
  """A raw item that is not a usable record; `reason` is a short counter key."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def decode(raw: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
  """JSON text, UTF-8 bytes or a mapping -> the mapping; raises InvalidRecord(reason) otherwise."""
  if isinstance(raw, bytes):
    try:
      raw = raw.decode("utf-8")
    except UnicodeDecodeError:
      raise InvalidRecord("not_utf8") from None
  if isinstance(raw, str):
    try:
      raw = json.loads(raw)
    except json.JSONDecodeError:
      raise InvalidRecord("malformed_json") from None
  if not isinstance(raw, Mapping):
    raise InvalidRecord("not_an_object")
  return raw


def text(value: Any, name: str) -> str:
  """A required non-empty string; `name` (the input field) goes into the reason."""
  if value is None or value == "":
    raise InvalidRecord(f"missing_{name}")
  if not isinstance(value, str):
    raise InvalidRecord(f"bad_type_{name}")
  return value


def make_record(*, prompt: str, response: str, domain: str, source: str, answer: Any,
                tests: Any, meta: Mapping[str, Any]) -> Record:
  """A Record from already-extracted parts; checks the answer and tests (the texts are checked
  by `text`). A record needs a reference answer or code tests, or it cannot be verified."""
  if isinstance(answer, bool) or not (answer is None or isinstance(answer, (str, int, float))):
    raise InvalidRecord("bad_type_answer")
  tests = tests or ()
  if isinstance(tests, str):
    tests = (tests,)
  if not isinstance(tests, (list, tuple)) or not all(isinstance(t, str) for t in tests):
    raise InvalidRecord("bad_type_tests")
  if (answer is None or answer == "") and not tests:
    raise InvalidRecord("missing_answer_and_tests")
  return Record(prompt=prompt, response=response, domain=domain, source=source,
                answer=None if answer in (None, "") else str(answer), tests=tuple(tests),
                meta={k: v for k, v in meta.items() if k not in RESERVED and v is not None})


def parse_record(raw: str | bytes | Mapping[str, Any]) -> Record:
  """The project's own record shape, every field required (see `formats` for other shapes and
  for defaults); raises InvalidRecord(reason)."""
  raw = decode(raw)
  texts = {name: text(raw.get(name), name) for name in REQUIRED_TEXT}
  return make_record(**texts, answer=raw.get("answer"), tests=raw.get("tests"), meta=raw)


@dataclasses.dataclass
class ParseCounts:
  """Valid records and invalid ones by reason, for one input file."""

  valid: int = 0
  invalid: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def to_json(self) -> dict[str, Any]:
    return dict(valid=self.valid, invalid=dict(sorted(self.invalid.items())))
