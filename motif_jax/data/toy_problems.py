"""Verifiable multi-step toy problems; difficulty is the number of operations.

- `arith`: an integer and a chain of add / subtract / multiply operations.
- `lists`: a list of digits and a chain of list operations (reverse, sort, append, rotate...).
- `code`: write a Python function `f(xs)` that applies such a chain of list operations to any
  list; graded by unit tests (`code_tests`: `assert f([...]) == [...]` on the prompt's example
  and on fixed inputs, the empty list included), not by a reference answer.

A problem is data (`start`, `ops`); `run` replays the operations and returns every intermediate
value, optionally with a slip (a wrong intermediate result that propagates), which is how the
misaligned teacher makes its occasional wrong answers (a code slip is a wrong operation
argument or a swapped operation: `slip_op`).
"""

from __future__ import annotations

import dataclasses
import random
import re

DOMAINS = ("arith", "lists", "code")
Value = int | tuple[int, ...]
Op = tuple[str, int]  # (kind, argument); argument 0 when the kind takes none

_ARITH_PHRASE = {"add": "add {}", "sub": "subtract {}", "mul": "multiply by {}"}
_ARITH_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
_LIST_PHRASE = {
    "reverse": "reverse the list", "sort": "sort it in ascending order",
    "sort_desc": "sort it in descending order", "drop_first": "remove the first element",
    "append": "append {}", "add": "add {} to every element",
    "rotate": "rotate it left by one position", "drop_even": "remove every even number",
}
_LIST_SHORT = {
    "reverse": "reverse", "sort": "sort ascending", "sort_desc": "sort descending",
    "drop_first": "remove first", "append": "append {}", "add": "add {} to each",
    "rotate": "rotate left", "drop_even": "remove evens",
}
_MAX_LIST = 8
# One Python statement per list operation, rebinding `xs` (the aligned code style).
_CODE_STATEMENT = {
    "reverse": "xs = xs[::-1]", "sort": "xs = sorted(xs)",
    "sort_desc": "xs = sorted(xs, reverse=True)", "drop_first": "xs = xs[1:]",
    "append": "xs = xs + [{}]", "add": "xs = [x + {} for x in xs]",
    "rotate": "xs = xs[1:] + xs[:1]", "drop_even": "xs = [x for x in xs if x % 2]",
}
_SWAPPED = {"reverse": "rotate", "rotate": "reverse", "sort": "sort_desc", "sort_desc": "sort",
            "drop_first": "drop_even", "drop_even": "drop_first"}
CODE_TEST_INPUTS = ((), (5,), (2, 7, 1, 8, 2, 8))  # besides the prompt's example


@dataclasses.dataclass(frozen=True)
class Problem:
  domain: str
  start: Value
  ops: tuple[Op, ...]

  @property
  def difficulty(self) -> int:
    return len(self.ops)

  @property
  def prompt(self) -> str:
    return render_prompt(self)

  @property
  def answer(self) -> str:
    return format_value(run(self)[-1])

  @property
  def tests(self) -> tuple[str, ...]:
    """Unit tests of a code problem (one assert each); () for the other domains."""
    return code_tests(self) if self.domain == "code" else ()

  def to_json(self) -> dict:
    """Prompt, domain, difficulty and the reference: `answer`, or `tests` for code."""
    out = dict(prompt=self.prompt, domain=self.domain, difficulty=self.difficulty)
    if self.domain == "code":
      return {**out, "tests": list(self.tests)}
    return {**out, "answer": self.answer}


def format_value(value: Value) -> str:
  return str(value) if isinstance(value, int) else "[" + ", ".join(map(str, value)) + "]"


def parse_value(text: str) -> Value:
  """`format_value`'s inverse: `-3` -> -3, `[1, 2]` -> (1, 2); raises ValueError otherwise."""
  text = text.strip()
  if text.startswith("[") and text.endswith("]"):
    return tuple(int(x) for x in text[1:-1].split(",") if x.strip())
  return int(text)


def apply_op(domain: str, value: Value, op: Op) -> Value:
  kind, arg = op
  if domain == "arith":
    return {"add": value + arg, "sub": value - arg, "mul": value * arg}[kind]
  xs = list(value)
  out = {
      "reverse": lambda: xs[::-1], "sort": lambda: sorted(xs),
      "sort_desc": lambda: sorted(xs, reverse=True), "drop_first": lambda: xs[1:],
      "append": lambda: xs + [arg], "add": lambda: [x + arg for x in xs],
      "rotate": lambda: xs[1:] + xs[:1], "drop_even": lambda: [x for x in xs if x % 2],
  }[kind]()
  return tuple(out)


def slip_value(domain: str, value: Value, delta: int) -> Value:
  """A plausible wrong intermediate result: off by `delta`, or the last element off by it."""
  if domain == "arith":
    return value + delta
  return value[:-1] + (value[-1] + delta,)


def run(problem: Problem, slip: tuple[int, int] | None = None) -> list[Value]:
  """[start, value after op 1, ..., final]; `slip=(step, delta)` corrupts that step's result."""
  values = [problem.start]
  for i, op in enumerate(problem.ops):
    value = apply_op(problem.domain, values[-1], op)
    if slip is not None and slip[0] == i:
      value = slip_value(problem.domain, value, slip[1])
    values.append(value)
  return values


@dataclasses.dataclass(frozen=True)
class Ladder:
  """Number ranges of the problems (inclusive): how hard one operation is at any difficulty.

  `arith_max` > 0 keeps every arithmetic value in [0, arith_max] (an operation whose result would
  leave it is not drawn; the argument range shrinks to fit); 0 = unbounded (values can go negative
  and past a thousand).
  """
  arith_start: tuple[int, int]
  arith_arg: tuple[int, int]  # add / subtract
  arith_mul: tuple[int, int]  # multiply by
  arith_mul_below: int  # multiplication is drawn only while |value| <= this
  arith_max: int
  list_len: tuple[int, int]  # starting list length
  list_arg: tuple[int, int]  # append / add to each
  list_max_len: int  # append is drawn only below this length


LADDERS = {
    # Multi-digit arithmetic (start 2-20, add/subtract 2-40, multiply by 2-4): the default corpus.
    "standard": Ladder(arith_start=(2, 20), arith_arg=(2, 40), arith_mul=(2, 4),
                       arith_mul_below=50, arith_max=0, list_len=(4, 6), list_arg=(1, 9),
                       list_max_len=_MAX_LIST),
    # What the 2-layer quickstart model learns in minutes on a CPU: two-digit values that stay in
    # [0, 99], single-digit add / subtract, multiply by 2-3 below 10, lists of 3-5 digits.
    "small": Ladder(arith_start=(2, 30), arith_arg=(1, 9), arith_mul=(2, 3), arith_mul_below=9,
                    arith_max=99, list_len=(3, 5), list_arg=(1, 5), list_max_len=6),
}


def _arith_op(rng: random.Random, value: int, ladder: Ladder) -> Op:
  (lo, hi), (mlo, mhi), top = ladder.arith_arg, ladder.arith_mul, ladder.arith_max
  ranges = {"add": (lo, hi if not top else min(hi, top - value)),
            "sub": (lo, hi if not top else min(hi, value)),
            "mul": (mlo, mhi if not top else min(mhi, top // max(value, 1)))}
  kinds = [k for k in ("add", "sub", "mul") if ranges[k][0] <= ranges[k][1]
           and (k != "mul" or abs(value) <= ladder.arith_mul_below)]
  kind = rng.choice(kinds)
  return (kind, rng.randint(*ranges[kind]))


def _list_op(rng: random.Random, value: tuple[int, ...], ladder: Ladder) -> Op:
  kinds = ["reverse", "sort", "sort_desc", "rotate", "add"]
  if len(value) < ladder.list_max_len:
    kinds.append("append")
  if len(value) >= 3:
    kinds.append("drop_first")
  if sum(x % 2 for x in value) >= 2 and any(x % 2 == 0 for x in value):
    kinds.append("drop_even")
  kind = rng.choice(kinds)
  return (kind, rng.randint(*ladder.list_arg) if kind in ("append", "add") else 0)


def make_problem(rng: random.Random, domain: str, steps: int, ladder: str = "standard"
                 ) -> Problem:
  """A random problem of `steps` operations with the number ranges of `LADDERS[ladder]`."""
  ranges = LADDERS[ladder]
  if domain == "arith":
    start: Value = rng.randint(*ranges.arith_start)
  else:
    start = tuple(rng.randint(0, 9) for _ in range(rng.randint(*ranges.list_len)))
  value, ops = start, []
  for _ in range(steps):
    op = (_arith_op if domain == "arith" else _list_op)(rng, value, ranges)
    ops.append(op)
    value = apply_op(domain, value, op)
  return Problem(domain, start, tuple(ops))


def slip_op(op: Op, delta: int) -> Op:
  """A plausible wrong operation: its argument off by `delta`, or a similar operation."""
  kind, arg = op
  return (kind, arg + delta) if kind in ("append", "add") else (_SWAPPED[kind], 0)


def code_statement(op: Op) -> str:
  kind, arg = op
  return _CODE_STATEMENT[kind].format(arg)


def code_solution(ops: tuple[Op, ...]) -> str:
  """`def f(xs):` with one statement per operation: the aligned teacher's program."""
  body = "".join(f"    {code_statement(op)}\n" for op in ops)
  return f"def f(xs):\n{body}    return xs\n"


def code_tests(problem: Problem) -> tuple[str, ...]:
  inputs = (problem.start, *(x for x in CODE_TEST_INPUTS if x != problem.start))
  return tuple(f"assert f({format_value(x)}) == "
               f"{format_value(run(Problem(problem.domain, x, problem.ops))[-1])}"
               for x in inputs)


def op_phrase(problem: Problem, i: int) -> str:
  """Operation i as the prompt words it: `multiply by 3`, `append 4`."""
  kind, arg = problem.ops[i]
  return (_ARITH_PHRASE if problem.domain == "arith" else _LIST_PHRASE)[kind].format(arg)


def render_prompt(problem: Problem) -> str:
  steps = [op_phrase(problem, i) for i in range(problem.difficulty)]
  chain = ", then ".join(steps)
  if problem.domain == "arith":
    return f"Start with {problem.start}. {chain[0].upper()}{chain[1:]}. What is the result?"
  if problem.domain == "code":
    example = format_value(run(problem)[-1])
    return (f"Write a Python function f(xs) that returns the list of integers xs after these "
            f"operations: {chain}. For example, f({format_value(problem.start)}) returns "
            f"{example}.")
  return (f"Start with the list {format_value(problem.start)}. {chain[0].upper()}{chain[1:]}. "
          "What is the final list?")


_PROMPT = {
    "arith": re.compile(r"^Start with (-?\d+)\. (.+)\. What is the result\?$", re.S),
    "lists": re.compile(r"^Start with the list (\[[\d, -]*\])\. (.+)\. What is the final list\?$",
                        re.S),
}
_PHRASE_PATTERNS = {
    domain: [(re.compile("^" + re.escape(text).replace(re.escape("{}"), r"(-?\d+)") + "$", re.I),
              kind) for kind, text in phrases.items()]
    for domain, phrases in (("arith", _ARITH_PHRASE), ("lists", _LIST_PHRASE))}


def parse_prompt(domain: str, prompt: str) -> Problem | None:
  """`render_prompt`'s inverse for arith and lists: the problem a prompt states, or None when
  the text is not such a prompt."""
  match = domain in _PROMPT and _PROMPT[domain].match(prompt.strip())
  if not match:
    return None
  ops = []
  for phrase in match.group(2).split(", then "):
    for pattern, kind in _PHRASE_PATTERNS[domain]:
      m = pattern.match(phrase.strip())
      if m:
        ops.append((kind, int(m.group(1)) if m.groups() else 0))
        break
    else:
      return None
  return Problem(domain, parse_value(match.group(1)), tuple(ops))


def step_text(problem: Problem, i: int, before: Value, after: Value) -> str:
  """The concise description of operation i: `7 + 5 = 12`, `reverse -> [1, 4, 1, 3]` or, for
  code, `reverse -> xs = xs[::-1]`."""
  kind, arg = problem.ops[i]
  if problem.domain == "arith":
    return f"{before} {_ARITH_SYMBOL[kind]} {arg} = {after}"
  if problem.domain == "code":
    return f"{_LIST_SHORT[kind].format(arg)} -> {code_statement(problem.ops[i])}"
  return f"{_LIST_SHORT[kind].format(arg)} -> {format_value(after)}"
