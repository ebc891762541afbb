"""A step verifier for the toy domains: which of a response's reasoning steps are correct.

The toy prompt states the whole problem (`toy_problems.render_prompt`), so `parse_prompt`
recovers it, and each numbered step of a response (`1. 14 + 7 = 21`, `2. reverse -> [3, 1]`) can
be checked on its own: step i must apply operation i to the value the response itself held
before it (the start value for step 1) and state the result. An earlier slip does not fail the
later steps that correctly continue from it; a missing, extra or unparsable step is wrong.
`step_accuracy` is the share of the problem's operations done right: a process signal, where
the final-answer check only sees the last value (a response can reach the right answer through
a wrong step, or miss it through one slip in four steps).
"""

from __future__ import annotations

import re

from motif_jax.data import toy_problems as tp

_START = {
    "arith": re.compile(r"^Start with (-?\d+)\. (.+)\. What is the result\?$", re.S),
    "lists": re.compile(r"^Start with the list \[([\d, -]*)\]\. (.+)\. What is the final list\?$",
                        re.S),
}
_ARITH_STEP = re.compile(r"^\s*\d+\.\s*(-?\d+) ([+*-]) (-?\d+) = (-?\d+)\s*$")
_LIST_STEP = re.compile(r"^\s*\d+\.\s*(.+?) -> \[([\d, -]*)\]\s*$")


def _phrase_patterns(domain: str) -> list[tuple[re.Pattern, str]]:
  phrases = tp._ARITH_PHRASE if domain == "arith" else tp._LIST_PHRASE  # noqa: SLF001
  return [(re.compile("^" + re.escape(text).replace(re.escape("{}"), r"(-?\d+)") + "$", re.I),
           kind) for kind, text in phrases.items()]


_PHRASES = {domain: _phrase_patterns(domain) for domain in _START}


def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x.strip())


def parse_prompt(domain: str, prompt: str) -> tp.Problem | None:
  """The arith / lists problem a toy prompt states, or None when it is not one."""
  match = _START.get(domain) and _START[domain].match(prompt.strip())
  if not match:
    return None
  start = int(match.group(1)) if domain == "arith" else _ints(match.group(1))
  ops = []
  for phrase in match.group(2).split(", then "):
    for pattern, kind in _PHRASES[domain]:
      m = pattern.match(phrase.strip())
      if m:
        ops.append((kind, int(m.group(1)) if m.groups() else 0))
        break
    else:
      return None
  return tp.Problem(domain, start, tuple(ops))


def _stated(domain: str, line: str) -> tuple[object, object] | None:
  """(value the step starts from or None when it does not say, value it states) of one line."""
  if domain == "arith":
    m = _ARITH_STEP.match(line)
    return None if m is None else (int(m.group(1)), int(m.group(4)))
  m = _LIST_STEP.match(line)
  return None if m is None else (None, _ints(m.group(2)))


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
