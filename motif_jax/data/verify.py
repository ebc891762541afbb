"""Answer verification for SFT traces: each method returns None (verified) or a drop reason.

- `exact`: the extracted final answer equals the reference after whitespace normalization (toy
  domains, whose answers are canonical strings such as `42` or `[3, 1, 4]`).
- `math_verify`: math-verify's symbolic comparison of the text after the think block with the
  reference answer (boxed answers, fractions vs decimals, sets, intervals...).
- `tests`: code records must carry unit tests; running them is the RL sandbox's job, not ours.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from motif_jax.data.traces import Scored

_SPACE = re.compile(r"\s+")


def _normalize(text: str) -> str:
  return _SPACE.sub(" ", text.strip().strip("$").strip())


def verify_exact(item: Scored) -> str | None:
  if item.record.answer is None:
    return "no_reference_answer"
  if item.trace.answer is None:
    return "no_extracted_answer"
  return None if _normalize(item.trace.answer) == _normalize(item.record.answer) else "wrong_answer"


def verify_math(item: Scored) -> str | None:
  from math_verify import parse, verify  # noqa: PLC0415 (sympy import is slow; load on use)
  if item.record.answer is None:
    return "no_reference_answer"
  # math-verify times out with signal.alarm, which only works on the main thread.
  timeout = 5 if threading.current_thread() is threading.main_thread() else None
  gold_text = item.record.answer
  if "$" not in gold_text and "\\boxed" not in gold_text:
    gold_text = f"${gold_text}$"
  gold = parse(gold_text, parsing_timeout=timeout)
  predicted = parse(item.trace.final, parsing_timeout=timeout)
  if not gold:
    return "unparsable_reference"
  if not predicted:
    return "no_extracted_answer"
  return None if verify(gold, predicted, timeout_seconds=timeout) else "wrong_answer"


def verify_tests(item: Scored) -> str | None:
  return None if item.record.tests else "no_tests"


VERIFIERS: dict[str, Callable[[Scored], str | None]] = {
    "exact": verify_exact,
    "math_verify": verify_math,
    "tests": verify_tests,
}
