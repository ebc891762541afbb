"""Runs the parts of the GPU check, each in its own process under its own time budget.

A part is a module with `cases(ctx) -> Iterator[(name, thunk)]`. The child process
(`python -m motif_jax.bench.gpu_harness --module=...`) runs the thunks in order and appends one
JSON line per finished case to a record file, so whatever finished survives a kill. Two guards:

  soft: before each case the child checks its deadline; past it, the part stops as `timeout`
        with the cases it finished;
  hard: the parent kills the child's process group at the part's limit (a hung compile or
        kernel), and the part is `timeout` with the cases recorded so far.

A thunk returns a dict of figures; with a "passed" key it is a check (passed / failed), else a
measurement (ok). `Skipped(reason)` marks a case, or, raised before the first case, the whole
part, as skipped. An exception in a thunk records the case as `error` with its traceback tail
and the part goes on; a child that dies without finishing records the part as `error` with the
tail of its log. Part status: timeout > error > failed > skipped (every case skipped) > ok.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

TAIL_CHARS = 2000


class Skipped(Exception):
  """A case (or a whole part) that cannot run here; the message says why."""


@dataclasses.dataclass(frozen=True)
class PartContext:
  dry_run: bool  # CPU: tiny shapes, Pallas interpret mode, GPU-only cases skipped
  deadline: float  # time.time() after which no new case starts
  out_dir: str

  def seconds_left(self) -> float:
    return self.deadline - time.time()


Case = tuple[str, Callable[[], dict]]


# ---- Child side --------------------------------------------------------------------------------

def _run_case(name: str, thunk: Callable[[], dict]) -> dict:
  start = time.perf_counter()
  try:
    figures = thunk()
    status = ("passed" if figures["passed"] else "failed") if "passed" in figures else "ok"
    record = {"name": name, "status": status, **figures}
  except Skipped as e:
    record = {"name": name, "status": "skipped", "reason": str(e)}
  except Exception:  # noqa: BLE001: any failure of one case is recorded, the next case runs
    record = {"name": name, "status": "error",
              "traceback_tail": traceback.format_exc()[-TAIL_CHARS:]}
  record["seconds"] = round(time.perf_counter() - start, 3)
  return record


def run_cases(cases: Iterator[Case], ctx: PartContext, emit: Callable[[dict], None]) -> None:
  """Runs cases in order, emitting a record per case and a final {"event": "end"}."""
  try:
    for name, thunk in cases:
      if ctx.seconds_left() <= 0:
        emit({"event": "end", "stopped": "deadline", "next_case": name})
        return
      emit({"event": "case", **_run_case(name, thunk)})
  except Skipped as e:  # raised by the generator itself: the whole part cannot run
    emit({"event": "end", "skipped": str(e)})
    return
  emit({"event": "end"})


def _child_main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--module", required=True)
  parser.add_argument("--record", required=True)
  parser.add_argument("--deadline", type=float, required=True)
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--dry_run", action="store_true")
  args = parser.parse_args(argv)
  ctx = PartContext(dry_run=args.dry_run, deadline=args.deadline, out_dir=args.out_dir)
  with open(args.record, "a") as f:
    def emit(event: dict) -> None:
      f.write(json.dumps(event, default=_jsonable) + "\n")
      f.flush()
      print(f"[{args.module.rsplit('.', 1)[-1]}] {json.dumps(event, default=_jsonable)[:300]}",
            flush=True)

    module = importlib.import_module(args.module)
    if hasattr(module, "environment"):
      emit({"event": "environment", **module.environment()})
    run_cases(module.cases(ctx), ctx, emit)


def _jsonable(x):
  if hasattr(x, "item"):
    return x.item()
  if isinstance(x, tuple):
    return list(x)
  return str(x)


# ---- Parent side -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PartSpec:
  name: str
  module: str  # importable module with cases(ctx)
  weight: float  # share of the remaining budget


def _read_events(path: Path) -> list[dict]:
  if not path.exists():
    return []
  events = []
  for line in path.read_text().splitlines():
    try:
      events.append(json.loads(line))
    except json.JSONDecodeError:  # a line cut by a kill
      pass
  return events


def _tail(path: Path) -> str:
  return path.read_text(errors="replace")[-TAIL_CHARS:] if path.exists() else ""


def part_status(cases: list[dict], end: dict | None, killed: bool) -> str:
  if killed or (end is not None and "stopped" in end):
    return "timeout"
  if end is None or any(c["status"] == "error" for c in cases):
    return "error"
  if "skipped" in end:
    return "skipped"
  if any(c["status"] == "failed" for c in cases):
    return "failed"
  if cases and all(c["status"] == "skipped" for c in cases):
    return "skipped"
  return "ok"


def run_part(spec: PartSpec, *, limit_s: float, out_dir: Path, dry_run: bool,
             grace_s: float | None = None, env: dict | None = None) -> dict:
  """Runs one part in a child process: soft deadline at limit - grace, hard kill at limit."""
  grace = max(2.0, 0.1 * limit_s) if grace_s is None else grace_s
  logs = out_dir / "logs"
  logs.mkdir(parents=True, exist_ok=True)
  record, log = logs / f"{spec.name}.jsonl", logs / f"{spec.name}.log"
  record.unlink(missing_ok=True)
  start = time.time()
  cmd = [sys.executable, "-m", "motif_jax.bench.gpu_harness", f"--module={spec.module}",
         f"--record={record}", f"--deadline={start + max(0.0, limit_s - grace)}",
         f"--out_dir={out_dir}"] + (["--dry_run"] if dry_run else [])
  killed = False
  with open(log, "w") as log_f:
    proc = subprocess.Popen(cmd, stdout=log_f, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # its own group: pytest children die too
    try:
      returncode = proc.wait(timeout=max(0.1, limit_s))
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      killed, returncode = True, None
  events = _read_events(record)
  cases = [{k: v for k, v in e.items() if k != "event"} for e in events if e["event"] == "case"]
  ends = [e for e in events if e["event"] == "end"]
  end = ends[-1] if ends else None
  environment = next(({k: v for k, v in e.items() if k != "event"} for e in events
                      if e["event"] == "environment"), {})
  status = part_status(cases, end, killed)
  result = {"name": spec.name, "status": status, "seconds": round(time.time() - start, 1),
            "limit_s": round(limit_s, 1), "cases": cases, "environment": environment,
            "log": str(log)}
  if killed:
    result["reason"] = f"killed at its {limit_s:.0f} s limit (hard watchdog)"
  elif end is not None and "stopped" in end:
    result["reason"] = f"deadline reached before case {end['next_case']!r}"
  elif end is not None and "skipped" in end:
    result["reason"] = end["skipped"]
  elif end is None:
    result["reason"] = f"process exited with code {returncode} before finishing"
    result["traceback_tail"] = _tail(log)
  return result


def run_parts(specs: list[PartSpec], *, budget_s: float, out_dir: Path, dry_run: bool,
              env: dict | None = None, grace_s: float | None = None,
              log: Callable[[str], None] = print,
              on_part: Callable[[list[dict]], None] = lambda results: None) -> list[dict]:
  """Runs parts in order; each gets its weight's share of what the earlier ones left.
  on_part(results so far) runs after each part (the caller saves them: a kill of the whole
  command then loses at most the running part)."""
  deadline = time.time() + budget_s
  results = []
  for i, spec in enumerate(specs):
    remaining = deadline - time.time()
    share = spec.weight / sum(s.weight for s in specs[i:])
    limit = remaining * share
    if limit < 1.0:
      results.append({"name": spec.name, "status": "timeout", "seconds": 0.0, "limit_s": 0.0,
                      "cases": [], "reason": "no budget left", "environment": {}})
      on_part(results)
      continue
    log(f"part {spec.name}: limit {limit:.0f} s")
    result = run_part(spec, limit_s=limit, out_dir=out_dir, dry_run=dry_run, grace_s=grace_s,
                      env=env)
    log(f"part {spec.name}: {result['status']} in {result['seconds']:.0f} s "
        f"({len(result['cases'])} cases)")
    results.append(result)
    on_part(results)
  return results


if __name__ == "__main__":
  # Through the imported module, so that the parts' `Skipped` is the class run_cases catches.
  from motif_jax.bench import gpu_harness
  gpu_harness._child_main(sys.argv[1:])
