"""Anatomy of a reasoning trace: think block, steps, final answer, and their token statistics.

A response is `<think>STEP…STEP</think>FINAL`. Steps are the non-blank pieces of the think block
between matches of `TraceConfig.step_split` (newlines by default). The final answer is the last
`\\boxed{…}` of FINAL (balanced braces), else its last fenced code block, else none.
`TraceStats` holds the numbers the verbosity, granularity and style filters read.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

from motif_jax.data.config import TraceConfig
from motif_jax.data.records import Record
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import Tokenizer

_CODE_BLOCK = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Trace:
  has_think: bool  # the response opens with the think tag
  think_closed: bool
  think: str  # reasoning text ("" when there is no think block)
  final: str  # text after the think block (the whole response when it is not closed)
  answer: str | None  # extracted final answer
  steps: tuple[str, ...]


def extract_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` with balanced braces, or None."""
  start = text.rfind("\\boxed{")
  while start != -1:
    depth = 0
    for i in range(start + len("\\boxed"), len(text)):
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      if depth == 0:
        return text[start + len("\\boxed{"):i].strip()
    start = text.rfind("\\boxed{", 0, start)  # unbalanced: try an earlier one
  return None


def extract_answer(final: str) -> str | None:
  boxed = extract_boxed(final)
  if boxed is not None:
    return boxed
  blocks = _CODE_BLOCK.findall(final)
  return blocks[-1].strip() if blocks else None


def split_trace(response: str, template: ChatTemplate, trace_cfg: TraceConfig) -> Trace:
  text = response.lstrip()
  has_think = text.startswith(template.think_open)
  body = text[len(template.think_open):] if has_think else text
  think, closed, final = body, False, ""
  if has_think and template.think_close in body:
    think, _, final = body.partition(template.think_close)
    closed = True
  if not has_think:
    think, final = "", body
  steps = tuple(s.strip() for s in re.split(trace_cfg.step_split, think) if s.strip())
  return Trace(has_think=has_think, think_closed=closed, think=think, final=final,
               answer=extract_answer(final) if closed or not has_think else None, steps=steps)


@dataclasses.dataclass(frozen=True)
class TraceStats:
  response_tokens: int
  think_tokens: int
  answer_tokens: int  # tokens after the think block
  num_steps: int
  mean_step_tokens: float
  numbered_fraction: float  # share of steps that start with a step number
  nll: float | None = None  # target model's mean per-token NLL on the completion

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def measure(trace: Trace, tokenizer: Tokenizer, trace_cfg: TraceConfig) -> TraceStats:
  step_tokens = [len(tokenizer.encode(s)) for s in trace.steps]
  numbered = re.compile(trace_cfg.numbered_step, re.IGNORECASE)
  think_tokens = len(tokenizer.encode(trace.think))
  answer_tokens = len(tokenizer.encode(trace.final))
  return TraceStats(
      response_tokens=think_tokens + answer_tokens,
      think_tokens=think_tokens,
      answer_tokens=answer_tokens,
      num_steps=len(step_tokens),
      mean_step_tokens=sum(step_tokens) / len(step_tokens) if step_tokens else 0.0,
      numbered_fraction=(sum(bool(numbered.match(s)) for s in trace.steps) / len(trace.steps)
                         if trace.steps else 0.0),
  )


class Scored(NamedTuple):
  """A record with its parsed trace and statistics: the element the filters see."""

  record: Record
  trace: Trace
  stats: TraceStats


def score(record: Record, tokenizer: Tokenizer, template: ChatTemplate,
          trace_cfg: TraceConfig) -> Scored:
  trace = split_trace(record.response, template, trace_cfg)
  return Scored(record, trace, measure(trace, tokenizer, trace_cfg))
