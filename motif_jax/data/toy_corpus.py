"""The toy reasoning corpus: problems rendered by teachers, a target sample, a held-out set.

- aligned teacher (`teacher_aligned`): the target style, one numbered line per operation,
  `<think>\\n1. 7 + 5 = 12\\n2. 12 * 3 = 36\\n</think>\\n\\boxed{36}`; for code, one numbered
  line per statement and the function in a fenced block after the think block;
- misaligned teacher (`teacher_misaligned`): verbose prose paragraphs that each cover two or three
  operations, with filler sentences; a share `error_rate` of its answers are wrong (a slipped
  intermediate result, or for code a wrong statement) and a share `format_error_rate` has a broken
  think block or no boxed answer (no fenced code block);
- partly aligned teacher (`teacher_verbose`, opt-in: not in the default corpus): the target's
  format and granularity (one numbered step per operation, closed think block, boxed answer or
  fenced function, every answer right) in verbose prose, about three times the target's tokens;
  the third candidate of the teacher probe (`motif_jax.probe`);
- `reference`: the target model's own outputs (the aligned style) on fresh problems, the sample
  the style profile is measured on;
- `heldout`: problems (prompt + answer) per domain and difficulty for greedy-generation accuracy,
  disjoint from the training prompts.

Everything is seeded and generated in memory; a share `duplicate_rate` of the corpus is re-emitted
as exact or near (a sentence added to the prompt) duplicates for the dedup filter to find.
"""

from __future__ import annotations

import json
import os
import random

from motif_jax.data.config import ToyConfig
from motif_jax.data import sources
from motif_jax.data.records import Record
from motif_jax.data.toy_problems import (Problem, code_solution, code_statement, format_value,
                                         make_problem, op_phrase, run, slip_op, step_text)

ALIGNED, MISALIGNED, REFERENCE = "teacher_aligned", "teacher_misaligned", "target_reference"
VERBOSE = "teacher_verbose"  # partly aligned: target format and steps, verbose prose
TEACHERS = (ALIGNED, VERBOSE, MISALIGNED)  # every teacher, most aligned first
_CONNECTIVES = ("Next,", "After that,", "Then", "Now", "Moving on,", "Following that,")
_FILLERS = (
    "Let me double-check this carefully before moving on.",
    "That seems right so far, but I want to be careful not to make a silly mistake here.",
    "Hmm, let me re-read the problem to make sure I am following the instructions in order.",
    "It is important to keep careful track of the running value at every point.",
    "I will pause for a moment to verify that this intermediate result is consistent.",
)


def _rng(cfg: ToyConfig, stream: str) -> random.Random:
  return random.Random(f"{cfg.seed}:{stream}")  # str seeds hash deterministically (sha512)


def problems(cfg: ToyConfig, stream: str, per_domain: int) -> list[Problem]:
  rng = _rng(cfg, stream)
  return [make_problem(rng, domain, rng.randint(cfg.min_steps, cfg.max_steps), cfg.ladder)
          for domain in cfg.domains for _ in range(per_domain)]


def aligned_response(problem: Problem) -> str:
  values = run(problem)
  lines = [f"{i + 1}. {step_text(problem, i, values[i], values[i + 1])}"
           for i in range(problem.difficulty)]
  if problem.domain == "code":
    return "<think>\n" + "\n".join(lines) + f"\n</think>\n{_fenced(code_solution(problem.ops))}"
  return "<think>\n" + "\n".join(lines) + f"\n</think>\n\\boxed{{{format_value(values[-1])}}}"


def _fenced(program: str) -> str:
  return f"```python\n{program}```"


def _prose_step(rng: random.Random, problem: Problem, i: int, before, after) -> str:
  kind, arg = problem.ops[i]
  lead = "First," if i == 0 else rng.choice(_CONNECTIVES)
  if problem.domain == "arith":
    word = {"add": "plus", "sub": "minus", "mul": "times"}[kind]
    return (f"{lead} the problem tells us to {op_phrase(problem, i)}, so {before} {word} {arg} "
            f"gives us {after}.")
  if problem.domain == "code":
    return (f"{lead} the function has to {op_phrase(problem, i)}, which I can write as "
            f"`{code_statement(problem.ops[i])}`; on the example it turns "
            f"{format_value(before)} into {format_value(after)}.")
  return (f"{lead} we need to {op_phrase(problem, i)}, which turns {format_value(before)} into "
          f"{format_value(after)}.")


def misaligned_response(problem: Problem, rng: random.Random, cfg: ToyConfig) -> str:
  slip = None
  if rng.random() < cfg.error_rate:
    slip = (rng.randrange(problem.difficulty), rng.choice((-3, -2, -1, 1, 2, 3)))
  if problem.domain == "code":
    return _misaligned_code(problem, rng, cfg, slip)
  values = run(problem, slip)
  if slip is not None and values[-1] == run(problem)[-1]:  # the slip was undone: slip at the end
    values[-1] = run(Problem(problem.domain, values[-2], problem.ops[-1:]), (0, slip[1]))[-1]
  paragraphs = [f"Okay, so the problem asks me to start from {format_value(problem.start)} and "
                f"apply {problem.difficulty} operations one after another. Let me work through "
                "it carefully, step by step, keeping track of the running value."]
  paragraphs += _prose_paragraphs(rng, problem, values)
  answer = format_value(values[-1])
  paragraphs.append(f"So after applying all of the operations in order, the running value ends "
                    f"at {answer}. I am fairly confident in this result.")
  lead = "After carefully working through every operation, the final answer is"
  return _think_response(rng, cfg, paragraphs, f"{lead} \\boxed{{{answer}}}.",
                         f"{lead} {answer}.")


def _think_response(rng: random.Random, cfg: ToyConfig, paragraphs: list[str], final: str,
                    unmarked_final: str) -> str:
  """Think block + final part; at cfg.format_error_rate a broken format: half the time an
  unclosed think block, half the time the final part without its marker (box or code fence)."""
  body = "<think>\n" + "\n\n".join(paragraphs)
  if rng.random() < cfg.format_error_rate:
    if rng.random() < 0.5:
      return body + "\n\n" + final
    final = unmarked_final
  return body + "\n</think>\n" + final


def _prose_paragraphs(rng: random.Random, problem: Problem, values: list) -> list[str]:
  """Paragraphs of two or three operations each, with a filler sentence in each."""
  paragraphs, i = [], 0
  while i < problem.difficulty:
    group = range(i, min(problem.difficulty, i + rng.randint(2, 3)))
    sentences = [_prose_step(rng, problem, j, values[j], values[j + 1]) for j in group]
    sentences.insert(rng.randrange(len(sentences) + 1), rng.choice(_FILLERS))
    paragraphs.append(" ".join(sentences))
    i = group[-1] + 1
  return paragraphs


def _misaligned_code(problem: Problem, rng: random.Random, cfg: ToyConfig,
                     slip: tuple[int, int] | None) -> str:
  """Prose paragraphs, then the function; a slip writes one operation wrong (prose included)."""
  ops = list(problem.ops)
  if slip is not None:
    ops[slip[0]] = slip_op(ops[slip[0]], slip[1])
  written = Problem(problem.domain, problem.start, tuple(ops))
  paragraphs = [f"Okay, so I need to write a function f(xs) that applies {problem.difficulty} "
                "list operations one after another. Let me work through them carefully, step "
                "by step, checking each one on the example from the problem."]
  paragraphs += _prose_paragraphs(rng, written, run(written))
  paragraphs.append("Putting all of these statements together in order, the function should "
                    "behave exactly as the problem describes. I am fairly confident in it.")
  program = code_solution(written.ops)
  lead = "Here is the complete function:"
  return _think_response(rng, cfg, paragraphs, f"{lead}\n{_fenced(program)}", f"{lead}\n{program}")


def verbose_response(problem: Problem, rng: random.Random) -> str:
  """The target's numbered one-operation steps and final part, each step wrapped in prose."""
  values = run(problem)
  lines = []
  for i in range(problem.difficulty):
    lead = "First," if i == 0 else rng.choice(_CONNECTIVES)
    before, after = format_value(values[i]), format_value(values[i + 1])
    if problem.domain == "code":
      body = (f"the function has to {op_phrase(problem, i)}, so I write the statement "
              f"{step_text(problem, i, values[i], values[i + 1])}; on the example it turns "
              f"{before} into {after}.")
    else:
      thing = "running value" if problem.domain == "arith" else "list"
      body = (f"the problem asks me to {op_phrase(problem, i)}. Working it out carefully, "
              f"{step_text(problem, i, values[i], values[i + 1])}, so the {thing} is now "
              f"{after}.")
    lines.append(f"{i + 1}. {lead} {body}")
  think = "<think>\n" + "\n".join(lines) + "\n</think>\n"
  if problem.domain == "code":
    return think + ("Putting these statements together in order, here is the complete "
                    f"function:\n{_fenced(code_solution(problem.ops))}")
  return think + ("Having worked through every operation one at a time, the final answer is "
                  f"\\boxed{{{format_value(values[-1])}}}.")


def teacher_records(cfg: ToyConfig, teacher: str) -> list[Record]:
  """Every training problem answered by one of `TEACHERS`, in problem order, no duplicates: the
  same prompts (and, for the misaligned teacher, the same traces) as `corpus`."""
  if teacher not in TEACHERS:
    raise ValueError(f"toy teacher {teacher!r} must be one of {TEACHERS}")
  rng, verbose_rng = _rng(cfg, "teachers"), _rng(cfg, "verbose")
  out = []
  for index, problem in enumerate(problems(cfg, "train", cfg.problems)):
    misaligned = misaligned_response(problem, rng, cfg)
    response = {ALIGNED: aligned_response, MISALIGNED: lambda _: misaligned,
                VERBOSE: lambda p: verbose_response(p, verbose_rng)}[teacher](problem)
    out.append(_record(problem, response, teacher, index))
  return out


def _record(problem: Problem, response: str, source: str, index: int) -> Record:
  """Toy domains carry the reference answer; code carries unit tests instead."""
  code = problem.domain == "code"
  return Record(prompt=problem.prompt, response=response, domain=problem.domain, source=source,
                answer=None if code else problem.answer, tests=problem.tests,
                meta=dict(difficulty=problem.difficulty,
                          problem_id=f"{problem.domain}-{index:06d}"))


def corpus(cfg: ToyConfig, teachers: tuple[str, ...] = (ALIGNED, MISALIGNED)) -> list[Record]:
  """Every training problem rendered by each of `teachers`, plus duplicates, in a seeded order."""
  rng = _rng(cfg, "teachers")
  verbose_rng = _rng(cfg, "verbose")  # its own stream: the other teachers' traces do not move
  records = []
  for index, problem in enumerate(problems(cfg, "train", cfg.problems)):
    misaligned = misaligned_response(problem, rng, cfg)  # drawn even if unused: same corpus
    if ALIGNED in teachers:
      records.append(_record(problem, aligned_response(problem), ALIGNED, index))
    if VERBOSE in teachers:
      records.append(_record(problem, verbose_response(problem, verbose_rng), VERBOSE, index))
    if MISALIGNED in teachers:
      records.append(_record(problem, misaligned, MISALIGNED, index))
  dup_rng = _rng(cfg, "duplicates")
  for original in dup_rng.sample(records, round(cfg.duplicate_rate * len(records))):
    near = dup_rng.random() < 0.5
    prompt = original.prompt + (" Show your work." if near else "")
    records.append(Record(prompt=prompt, response=original.response, domain=original.domain,
                          source=original.source, answer=original.answer, tests=original.tests,
                          meta={**original.meta, "duplicate": "near" if near else "exact"}))
  _rng(cfg, "order").shuffle(records)
  return records


def reference(cfg: ToyConfig) -> list[Record]:
  """The target model's style on fresh problems: what the style profile is measured on."""
  return [_record(p, aligned_response(p), REFERENCE, i)
          for i, p in enumerate(problems(cfg, "reference", cfg.reference_size))]


_HELDOUT_TRIES = 200  # draws per wanted held-out problem before the space counts as used up


def heldout(cfg: ToyConfig) -> list[Problem]:
  """`heldout_per_difficulty` problems per domain and difficulty, none with a training prompt."""
  seen = {p.prompt for p in problems(cfg, "train", cfg.problems)}
  rng = _rng(cfg, "heldout")
  out = []
  for domain in cfg.domains:
    for steps in range(cfg.min_steps, cfg.max_steps + 1):
      found = misses = 0
      while found < cfg.heldout_per_difficulty:
        problem = make_problem(rng, domain, steps, cfg.ladder)
        if problem.prompt in seen:
          misses += 1
          if misses > _HELDOUT_TRIES * cfg.heldout_per_difficulty:  # the space is used up
            raise ValueError(
                f"data.toy: only {found} held-out {domain} problems of difficulty {steps} are "
                f"not training prompts after {misses} tries (the {cfg.ladder!r} ladder has few "
                f"such problems and data.toy.problems={cfg.problems} uses most of them): lower "
                "data.toy.problems or data.toy.heldout_per_difficulty, or raise "
                "data.toy.min_steps")
          continue
        seen.add(problem.prompt)
        out.append(problem)
        found += 1
  return out


def heldout_records(cfg: ToyConfig) -> list[Record]:
  """The held-out problems as records (aligned response, answer or tests, difficulty, id)."""
  return [_record(p, aligned_response(p), "heldout", i) for i, p in enumerate(heldout(cfg))]


def save_splits(workdir: str, cfg: ToyConfig) -> None:
  """toy_reference.jsonl (target-style sample) and toy_heldout.jsonl (prompt, answer or tests,
  domain, difficulty) under `workdir`."""
  os.makedirs(workdir, exist_ok=True)
  sources.write_records(os.path.join(workdir, "toy_reference.jsonl"), reference(cfg))
  with open(os.path.join(workdir, "toy_heldout.jsonl"), "w") as f:
    f.writelines(json.dumps(p.to_json()) + "\n" for p in heldout(cfg))
