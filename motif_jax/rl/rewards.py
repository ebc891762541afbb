"""Verifiable rewards: small registered functions, combined per domain, scored in worker pools.

Every reward has one signature, `fn(completion_text, record, context=Context()) -> Reward`, once
its settings (keyword-only arguments, from `RewardConfig`) are bound by `bound(name, cfg)`.
`completion_text` is the response as `Record.response` holds it, `<think>…</think>answer`,
without the end-of-sequence token; `Context` carries what the text alone does not say: the
completion's length and budget in tokens, whether it stopped or ran out of budget, the template.

| name     | score                                                                              |
|----------|------------------------------------------------------------------------------------|
| math     | 1 when math-verify finds the answer after the think block equal to `record.answer`|
| exact    | 1 when the extracted answer equals `record.answer` (whitespace-normalized)         |
| code     | 1 when the answer's code passes `record.tests` in the sandbox (`rl/sandbox.py`)    |
| format   | 1 when the think block is closed, an answer is extractable and it is not truncated |
| overlong | DAPO's soft overlong penalty: 0 up to `budget - window` tokens, then linear down   |
|          | to -1 at the budget: (budget - window - length) / window                           |

Each returns 0 with `details["reason"]` when it fails. A domain's reward is sum(weight * term)
over `RewardConfig.terms[domain]`; the domain's first verifier term (math, exact, code: registered
with `verifier=True`) gives `details["correct"]`.

`Scorer.score` scores a batch: cheap terms inline; math-verify (sympy) in a process pool whose
worker is killed at `verifier_timeout_s` (a hang in C code cannot be interrupted otherwise, and
math-verify's own signal-based timeout only works on a main thread); code in a thread pool around
the sandbox (which runs each program in its own process tree with its own deadline). A term that
times out, raises or crashes its worker scores 0 with a reason; the caller is never blocked longer
than the deadline, whatever thread it runs on.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from motif_jax.data import toy_problems, toy_steps, verify
from motif_jax.data.config import TraceConfig
from motif_jax.data.records import Record
from motif_jax.data.template import ChatTemplate
from motif_jax.data.traces import Trace, split_trace

EXECUTORS = ("inline", "process", "thread")
_THREAD_GRACE_S = 5.0  # beyond the sandbox's own deadline, before a code term is abandoned
# Steps are not scored: only the think block and the final answer are read.
_TRACE = TraceConfig(step_split=r"\n+", numbered_step=r"^\s*\d")


@dataclasses.dataclass(frozen=True)
class Reward:
  score: float
  details: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Context:
  """What a reward may need beyond the text; the defaults say nothing about length."""

  length: int | None = None  # completion tokens (a stop token included)
  max_new_tokens: int | None = None  # the completion budget
  finished: bool = True  # False: the budget ran out (finish reason "length")
  template: ChatTemplate = ChatTemplate()


def parse(text: str, context: Context) -> Trace:
  return split_trace(text, context.template, _TRACE)


def _fail(reason: str, **details) -> Reward:
  return Reward(0.0, {"reason": reason, **details})


def _pass_or(reason: str | None, **details) -> Reward:
  return Reward(1.0, details) if reason is None else _fail(reason, **details)


# ---- the reward functions --------------------------------------------------------------------

def math_reward(text: str, record: Record, context: Context = Context(), *,
                timeout_s: int) -> Reward:
  trace = parse(text, context)
  return _pass_or(verify.math_match(record.answer, trace.final, timeout_s=timeout_s),
                  answer=trace.answer)


def exact_reward(text: str, record: Record, context: Context = Context()) -> Reward:
  trace = parse(text, context)
  return _pass_or(verify.exact_match(record.answer, trace.answer), answer=trace.answer)


def code_reward(text: str, record: Record, context: Context = Context(), *, timeout_s: float,
                memory_mb: int, allow_weak_isolation: bool) -> Reward:
  from motif_jax.rl import sandbox  # noqa: PLC0415 (only code domains need it)
  if not record.tests:
    return _fail("no_tests")
  program = parse(text, context).answer
  if program is None:
    return _fail("no_extracted_answer")
  result = sandbox.execute(program, "\n".join(record.tests), timeout_s=timeout_s,
                           memory_mb=memory_mb, allow_weak_isolation=allow_weak_isolation)
  details = dict(status=result.status, seconds=round(result.seconds, 3),
                 isolation=result.isolation)
  if result.passed:
    return Reward(1.0, details)
  return _fail(f"tests_{result.status}", detail=result.detail, stderr=result.stderr[-500:],
               **details)


def steps_reward(text: str, record: Record, context: Context = Context()) -> Reward:
  """Toy arith / lists: the share of the problem's operations that the response's numbered
  steps carry out correctly, each from the value the response held before it (a process
  reward: `data/toy_steps.py`; the problem is read back by `toy_problems.parse_prompt`).
  Records that are not toy problems score 0 with a reason."""
  problem = toy_problems.parse_prompt(record.domain, record.prompt)
  if problem is None:
    return _fail("not_a_toy_problem")
  steps = parse(text, context).steps
  return Reward(toy_steps.step_accuracy(problem, steps), {"steps": len(steps)})


def format_reward(text: str, record: Record, context: Context = Context()) -> Reward:
  del record
  trace = parse(text, context)
  if not context.finished:
    return _fail("truncated")
  if not trace.has_think:
    return _fail("no_think_block")
  if not trace.think_closed:
    return _fail("unclosed_think")
  return _pass_or(None if trace.answer is not None else "no_extracted_answer")


def overlong_penalty(length: int, budget: int, window: int) -> float:
  """DAPO's soft overlong punishment (Yu et al. 2025): 0 up to budget - window tokens, then
  linear down to -1 at the budget, -1 beyond it."""
  if length <= budget - window:
    return 0.0
  if length <= budget:
    return (budget - window - length) / window
  return -1.0


def overlong_reward(text: str, record: Record, context: Context = Context(), *,
                    window: int) -> Reward:
  del text, record
  if context.length is None or context.max_new_tokens is None:
    raise ValueError("the overlong reward needs Context(length=, max_new_tokens=)")
  penalty = overlong_penalty(context.length, context.max_new_tokens, window)
  return Reward(penalty, {"length": context.length, "budget": context.max_new_tokens})


# ---- registry and configuration --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RewardSpec:
  fn: Callable[..., Reward]
  executor: str  # inline | process (killed at the deadline) | thread (for subprocess work)
  settings: Callable[["RewardConfig"], dict[str, Any]]  # keyword arguments bound from the config
  verifier: bool  # scores 1 exactly when the answer is correct (gives details["correct"])


REWARDS: dict[str, RewardSpec] = {}


def register(name: str, fn: Callable[..., Reward], *, executor: str = "inline",
             settings: Callable[["RewardConfig"], dict[str, Any]] = lambda cfg: {},
             verifier: bool = False) -> None:
  """Add a reward; `process` rewards must be picklable (module-level functions)."""
  if executor not in EXECUTORS:
    raise ValueError(f"reward {name!r}: executor={executor!r} must be one of {EXECUTORS}")
  REWARDS[name] = RewardSpec(fn, executor, settings, verifier)


# math-verify's own alarm (main thread only) is set a second past the pool's deadline: in the pool
# the kill decides (reason "timeout", not a math-verify "wrong_answer" after its own timeout);
# called directly on a main thread it still bounds the time.
register("math", math_reward, executor="process", verifier=True,
         settings=lambda cfg: dict(timeout_s=int(cfg.verifier_timeout_s) + 1))
register("exact", exact_reward, verifier=True)
register("code", code_reward, executor="thread", verifier=True,
         settings=lambda cfg: dict(timeout_s=cfg.code_timeout_s, memory_mb=cfg.code_memory_mb,
                                   allow_weak_isolation=cfg.code_allow_weak_isolation))
register("format", format_reward)
register("steps", steps_reward)
register("overlong", overlong_reward, settings=lambda cfg: dict(window=cfg.overlong_window))

Terms = tuple[tuple[str, float], ...]


def parse_terms(text: str, path: str) -> Terms:
  """"math:1.0,format:0.1" -> (("math", 1.0), ("format", 0.1)); a bare name weighs 1."""
  out = []
  for item in filter(None, (s.strip() for s in text.split(","))):
    name, sep, weight = item.partition(":")
    try:
      out.append((name.strip(), float(weight) if sep else 1.0))
    except ValueError:
      raise ValueError(f"{path} item {item!r} must be name or name:weight") from None
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """Per-domain reward terms and the verifiers' limits (configs/evaluate.py: rewards)."""

  terms: Mapping[str, str] | tuple[tuple[str, Terms], ...]  # domain -> "name:weight,..."
  default_terms: str | Terms  # for domains not in `terms`; "" = such domains are an error
  overlong_window: int  # tokens before the budget where the overlong penalty ramps
  verifier_timeout_s: float  # process-pool terms (math-verify): the worker is killed after it
  code_timeout_s: float  # sandbox deadline per program
  code_memory_mb: int  # sandbox address-space limit
  code_allow_weak_isolation: bool  # no namespaces on this machine: run code anyway (rlimits only)
  max_workers: int  # concurrent slow verifications (per pool)

  def __post_init__(self):
    if isinstance(self.terms, Mapping):
      object.__setattr__(self, "terms", tuple(
          (domain, parse_terms(text, f"rewards.terms.{domain}"))
          for domain, text in sorted(self.terms.items())))
    if isinstance(self.default_terms, str):
      object.__setattr__(self, "default_terms",
                         parse_terms(self.default_terms, "rewards.default_terms"))
    for path, terms in [(f"rewards.terms.{d}", t) for d, t in self.terms] + [
        ("rewards.default_terms", self.default_terms)]:
      for name, _ in terms:
        if name not in REWARDS:
          raise ValueError(f"{path}: unknown reward {name!r}; registered: {sorted(REWARDS)}")
    for name in ("overlong_window", "verifier_timeout_s", "code_timeout_s", "code_memory_mb",
                 "max_workers"):
      if not getattr(self, name) > 0:
        raise ValueError(f"rewards.{name}={getattr(self, name)!r} must be positive")

  def terms_for(self, domain: str) -> Terms:
    terms = dict(self.terms).get(domain, self.default_terms)
    if not terms:
      raise ValueError(f"domain {domain!r} has no reward terms: add rewards.terms.{domain} or "
                       "set rewards.default_terms")
    return terms


def bound(name: str, cfg: RewardConfig) -> Callable[..., Reward]:
  """Reward `name` with its settings from `cfg`: `(completion_text, record, context) -> Reward`."""
  spec = REWARDS[name]
  return functools.partial(spec.fn, **spec.settings(cfg))


# ---- batch scoring ---------------------------------------------------------------------------

def _call(fn: Callable[..., Reward], text: str, record: Record, context: Context) -> Reward:
  """One term; an exception scores 0 with its reason (in whichever process runs it)."""
  try:
    return fn(text, record, context)
  except Exception as e:  # noqa: BLE001 (a verifier's failure is a score, not a crash)
    return _fail("error", error=f"{type(e).__name__}: {e}"[:500])


def _timed(started: list[float], fn, text, record, context) -> Reward:
  started.append(time.monotonic())
  return _call(fn, text, record, context)


def _await_process(future) -> Reward:
  import pebble  # noqa: PLC0415
  try:
    return future.result()
  except concurrent.futures.TimeoutError:
    return _fail("timeout")
  except pebble.ProcessExpired as e:  # the worker died (segfault, os._exit, OOM kill)
    return _fail("crash", exitcode=e.exitcode)
  except Exception as e:  # noqa: BLE001 (e.g. an unpicklable result)
    return _fail("error", error=f"{type(e).__name__}: {e}"[:500])


def _await_thread(future, started: list[float], limit_s: float) -> Reward:
  """The result, or a timeout once the task has run `limit_s` (queueing time not counted)."""
  while True:
    try:
      return future.result(timeout=0.05)
    except concurrent.futures.TimeoutError:
      if started and time.monotonic() - started[0] > limit_s:
        return _fail("timeout")


class Scorer:
  """Scores batches of completions with `cfg`'s per-domain terms; use as a context manager.

  Pools start on first use and are reused across batches: processes from a forkserver (never
  fork a process that runs JAX threads) with math-verify preloaded.
  """

  def __init__(self, cfg: RewardConfig):
    self.cfg = cfg
    self._processes = None
    self._threads: concurrent.futures.ThreadPoolExecutor | None = None

  def __enter__(self) -> "Scorer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    if self._processes is not None:
      self._processes.stop()  # kills workers still busy (abandoned hangs)
      self._processes.join()
      self._processes = None
    if self._threads is not None:
      self._threads.shutdown(wait=False, cancel_futures=True)
      self._threads = None

  def _submit(self, name: str, text: str, record: Record, context: Context) -> Callable[[], Reward]:
    spec, fn = REWARDS[name], bound(name, self.cfg)
    if spec.executor == "inline":
      reward = _call(fn, text, record, context)
      return lambda: reward
    if spec.executor == "process":
      if self._processes is None:
        import pebble  # noqa: PLC0415
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["math_verify", __name__])
        self._processes = pebble.ProcessPool(max_workers=self.cfg.max_workers, context=ctx)
      future = self._processes.schedule(_call, args=(fn, text, record, context),
                                        timeout=self.cfg.verifier_timeout_s)
      return functools.partial(_await_process, future)
    if self._threads is None:
      self._threads = concurrent.futures.ThreadPoolExecutor(self.cfg.max_workers,
                                                            thread_name_prefix="reward")
    started: list[float] = []
    future = self._threads.submit(_timed, started, fn, text, record, context)
    return functools.partial(_await_thread, future, started,
                             self.cfg.code_timeout_s + _THREAD_GRACE_S)

  def score(self, texts: Sequence[str], records: Sequence[Record],
            contexts: Sequence[Context] | None = None) -> list[Reward]:
    """One combined Reward per completion; details: answer, correct, terms (score, weight, ...)."""
    contexts = list(contexts) if contexts is not None else [Context()] * len(texts)
    if not len(texts) == len(records) == len(contexts):
      raise ValueError(f"score: {len(texts)} texts, {len(records)} records and "
                       f"{len(contexts)} contexts must match")
    # Submit everything first so slow terms of different items run concurrently.
    pending = [[(name, weight, self._submit(name, text, record, context))
                for name, weight in self.cfg.terms_for(record.domain)]
               for text, record, context in zip(texts, records, contexts)]
    return [combine(text, context, [(name, weight, resolve()) for name, weight, resolve in terms])
            for text, context, terms in zip(texts, contexts, pending)]


def combine(text: str, context: Context, terms: Sequence[tuple[str, float, Reward]]) -> Reward:
  """sum(weight * score); `correct` from the first verifier term (None when there is none)."""
  correct = next((r.score >= 1.0 for name, _, r in terms if REWARDS[name].verifier), None)
  details = {"answer": parse(text, context).answer, "correct": correct,
             "terms": {name: {"score": r.score, "weight": w, **r.details} for name, w, r in terms}}
  return Reward(sum(w * r.score for _, w, r in terms), details)
