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


def parse_record(raw: str | bytes | Mapping[str, Any]) -> Record:
  """JSON text, UTF-8 bytes or a mapping -> Record; raises InvalidRecord(reason) otherwise."""
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
  for name in REQUIRED_TEXT:
    value = raw.get(name)
    if value is None or value == "":
      raise InvalidRecord(f"missing_{name}")
    if not isinstance(value, str):
      raise InvalidRecord(f"bad_type_{name}")
  answer = raw.get("answer")
  if isinstance(answer, bool) or not (answer is None or isinstance(answer, (str, int, float))):
    raise InvalidRecord("bad_type_answer")
  tests = raw.get("tests") or ()
  if isinstance(tests, str):
    tests = (tests,)
  if not all(isinstance(t, str) for t in tests):
    raise InvalidRecord("bad_type_tests")
  if (answer is None or answer == "") and not tests:
    raise InvalidRecord("missing_answer_and_tests")
  known = set(REQUIRED_TEXT) | {"answer", "tests"}
  return Record(prompt=raw["prompt"], response=raw["response"], domain=raw["domain"],
                source=raw["source"], answer=None if answer in (None, "") else str(answer),
                tests=tuple(tests),
                meta={k: v for k, v in raw.items() if k not in known and v is not None})


@dataclasses.dataclass
class ParseCounts:
  """Valid records and invalid ones by reason, for one input file."""

  valid: int = 0
  invalid: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def to_json(self) -> dict[str, Any]:
    return dict(valid=self.valid, invalid=dict(sorted(self.invalid.items())))
