"""Answer verification for SFT traces: each method returns None (verified) or a drop reason.

- `exact`: the extracted final answer equals the reference after whitespace normalization (toy
  domains, whose answers are canonical strings such as `42` or `[3, 1, 4]`).
- `math_verify`: math-verify's symbolic comparison of the text after the think block with the
  reference answer (boxed answers, fractions vs decimals, sets, intervals...).
- `tests`: code records must carry unit tests; running them is the RL sandbox's job, not ours.

`math_match` and `math_equivalent` are the one math-verify comparison of the project: the RL
math reward (`motif_jax.rl.rewards`) and majority voting (`motif_jax.evaluation`) call them too.
math-verify bounds its own time with `signal.alarm`, which only works on the main thread; off it
the alarm is disabled here and the caller bounds the time (the reward scorer runs math-verify in
a process pool whose workers are killed at the deadline).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from motif_jax.data.traces import Scored

_SPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
  """Whitespace collapsed, surrounding `$` dropped: what `exact` compares."""
  return _SPACE.sub(" ", text.strip().strip("$").strip())


def exact_match(reference: str | None, answer: str | None) -> str | None:
  """None when `answer` equals `reference` after normalization, else the reason."""
  if reference is None:
    return "no_reference_answer"
  if answer is None:
    return "no_extracted_answer"
  return None if normalize_answer(answer) == normalize_answer(reference) else "wrong_answer"


def verify_exact(item: Scored) -> str | None:
  return exact_match(item.record.answer, item.trace.answer)


def _alarm_seconds(timeout_s: int) -> int | None:
  # signal.alarm only works on the main thread; elsewhere the caller must bound the time.
  return timeout_s if threading.current_thread() is threading.main_thread() else None


def parse_math(text: str, *, timeout_s: int = 5) -> list:
  """math-verify's parse of `text`; a bare answer (no `$`, no `\\boxed`) is read as LaTeX math."""
  from math_verify import parse  # noqa: PLC0415 (sympy import is slow; load on use)
  if "$" not in text and "\\boxed" not in text:
    text = f"${text}$"
  return parse(text, parsing_timeout=_alarm_seconds(timeout_s))


def math_match(reference: str | None, text: str, *, timeout_s: int = 5) -> str | None:
  """None when math-verify finds the answer in `text` equivalent to `reference`, else the reason.

  `text` is what follows the think block (math-verify extracts the boxed or last answer).
  """
  from math_verify import parse, verify  # noqa: PLC0415
  if reference is None:
    return "no_reference_answer"
  gold = parse_math(reference, timeout_s=timeout_s)
  predicted = parse(text, parsing_timeout=_alarm_seconds(timeout_s))
  if not gold:
    return "unparsable_reference"
  if not predicted:
    return "no_extracted_answer"
  ok = verify(gold, predicted, timeout_seconds=_alarm_seconds(timeout_s))
  return None if ok else "wrong_answer"


def math_equivalent(a: str, b: str, *, timeout_s: int = 5) -> bool:
  """Whether two bare answers are equal as math (`0.5` and `\\frac{1}{2}`), else as text."""
  from math_verify import verify  # noqa: PLC0415
  if normalize_answer(a) == normalize_answer(b):
    return True
  parsed_a, parsed_b = parse_math(a, timeout_s=timeout_s), parse_math(b, timeout_s=timeout_s)
  return bool(parsed_a and parsed_b and
              verify(parsed_a, parsed_b, timeout_seconds=_alarm_seconds(timeout_s)))


def verify_math(item: Scored) -> str | None:
  return math_match(item.record.answer, item.trace.final)


def verify_tests(item: Scored) -> str | None:
  return None if item.record.tests else "no_tests"


VERIFIERS: dict[str, Callable[[Scored], str | None]] = {
    "exact": verify_exact,
    "math_verify": verify_math,
    "tests": verify_tests,
}
