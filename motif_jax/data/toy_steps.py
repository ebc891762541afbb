"""A step verifier for the toy domains: which of a response's reasoning steps are correct.

The toy prompt states the whole problem (`toy_problems.render_prompt`), so
`toy_problems.parse_prompt` recovers it, and each numbered step of a response (`1. 14 + 7 = 21`,
`2. reverse -> [3, 1]`) can be checked on its own: step i must apply operation i to the value
the response itself held before it (the start value for step 1) and state the result. An
earlier slip does not fail the later steps that correctly continue from it; a missing, extra or
unparsable step is wrong.
`step_accuracy` is the share of the problem's operations done right: a process signal, where
the final-answer check only sees the last value (a response can reach the right answer through
a wrong step, or miss it through one slip in four steps).
"""

from __future__ import annotations

import re

from motif_jax.data import toy_problems as tp

_ARITH_STEP = re.compile(r"^\s*\d+\.\s*(-?\d+) ([+*-]) (-?\d+) = (-?\d+)\s*$")
_LIST_STEP = re.compile(r"^\s*\d+\.\s*(.+?) -> (\[[\d, -]*\])\s*$")


def _stated(domain: str, line: str) -> tuple[object, object] | None:
  """(value the step starts from or None when it does not say, value it states) of one line."""
  if domain == "arith":
    m = _ARITH_STEP.match(line)
    return None if m is None else (int(m.group(1)), int(m.group(4)))
  m = _LIST_STEP.match(line)
  return None if m is None else (None, tp.parse_value(m.group(2)))


def step_accuracy(problem: tp.Problem, steps: tuple[str, ...]) -> float:
  """Share of the problem's operations whose step applies that operation correctly to the value
  the response held before it; steps beyond the problem's count as errors too (divisor: the
  larger of the two counts)."""
  if not problem.ops:
    return 0.0
  held, right = problem.start, 0
  for op, line in zip(problem.ops, steps):
    stated = _stated(problem.domain, line)
    if stated is None:
      break
    before, after = stated  # an arith step also names its input: it must be the held value
    if before in (None, held) and after == tp.apply_op(problem.domain, held, op):
      right += 1
    held = after
  return right / max(len(problem.ops), len(steps))
