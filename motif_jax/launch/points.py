"""One sweep point on disk, and the process that runs it on whatever engine launched it.

`<sweep workdir>/<point name>/` holds:
  point.json    the point: overrides, derived values, the experiment command (argv)
  config.json   the resolved config (the experiment rewrites the same content)
  lock          while running: {"pid", "host", "started"}; touched every HEARTBEAT_S seconds
  status.json   {"status": done | failed | submitted, "returncode", "wall_s", "host", ...}
  log.txt       the experiment's stdout and stderr
  metrics.jsonl, checkpoints/, ...   the experiment's own outputs

Every launcher runs `python -m motif_jax.launch.points POINT_DIR` (once per host for multi-host
points: the process with JAX_PROCESS_ID 0 keeps the lock and the status). A lock is stale when its
process is gone (same host) or its heartbeat is older than STALE_S.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from motif_jax.launch import distributed

POINT_FILE, STATUS_FILE, LOCK_FILE, LOG_FILE = "point.json", "status.json", "lock", "log.txt"
HEARTBEAT_S = 30.0
STALE_S = 300.0
DONE, FAILED, RUNNING, SUBMITTED, PENDING = "done", "failed", "running", "submitted", "pending"


def write_json(path: Path, value) -> None:
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
  os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def lock_is_stale(lock: dict, mtime: float, *, now: float | None = None) -> bool:
  """Its process is gone (this host), or no heartbeat for STALE_S (any host, reused pids)."""
  if (time.time() if now is None else now) - mtime > STALE_S:
    return True
  return lock.get("host") == socket.gethostname() and not _alive(int(lock["pid"]))


def state(point_dir: Path) -> str:
  """done | failed | running (fresh lock) | submitted | pending (never run, or a stale lock)."""
  try:
    mtime = (point_dir / LOCK_FILE).stat().st_mtime
  except FileNotFoundError:
    lock = None
  else:  # a lock being written reads as {}: only its age tells
    lock = read_json(point_dir / LOCK_FILE) or {}
    if not lock_is_stale(lock, mtime):
      return RUNNING
  status = read_json(point_dir / STATUS_FILE)
  if status is None:
    return PENDING
  if status["status"] == SUBMITTED and lock is not None:
    return PENDING  # it started and died without a word: run it again
  return status["status"]


def acquire(point_dir: Path) -> bool:
  """Take the point's lock (atomic create); a stale lock is broken first. False if held."""
  path = point_dir / LOCK_FILE
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      if state(point_dir) == RUNNING:
        return False
      path.unlink(missing_ok=True)  # stale: its owner is gone
      continue
    with os.fdopen(fd, "w") as f:
      json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)
    return True
  return False


def log_tail(point_dir: Path, lines: int = 20) -> str:
  try:
    return "\n".join((point_dir / LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
  except FileNotFoundError:
    return "(no log)"


def run_point(point_dir: Path) -> int:
  """Run the point's command here; process 0 of a multi-host point holds lock and status."""
  point_dir = Path(point_dir).absolute()
  argv = read_json(point_dir / POINT_FILE)["argv"]
  lead = int(os.environ.get(distributed.ENV_PROCESS_ID, "0")) == 0
  if not lead:  # the other hosts of a multi-host point only run the experiment
    with open(point_dir / f"log.process{os.environ[distributed.ENV_PROCESS_ID]}.txt", "a") as log:
      return subprocess.call([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT)
  if not acquire(point_dir):
    print(f"{point_dir.name}: already running elsewhere, not started", file=sys.stderr)
    return 0
  stop = threading.Event()
  heartbeat = threading.Thread(target=_heartbeat, args=(point_dir / LOCK_FILE, stop), daemon=True)
  heartbeat.start()
  start = time.time()
  try:
    with open(point_dir / LOG_FILE, "a") as log:
      log.write(f"$ {sys.executable} {' '.join(argv)}\n")
      log.flush()
      code = subprocess.call([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT)
    write_json(point_dir / STATUS_FILE, {
        "status": DONE if code == 0 else FAILED, "returncode": code,
        "wall_s": round(time.time() - start, 3), "host": socket.gethostname(),
        "started": start, "ended": time.time()})
    return code
  finally:
    stop.set()
    (point_dir / LOCK_FILE).unlink(missing_ok=True)


def _heartbeat(path: Path, stop: threading.Event) -> None:
  while not stop.wait(HEARTBEAT_S):
    try:
      os.utime(path)
    except FileNotFoundError:
      return


if __name__ == "__main__":
  sys.exit(run_point(Path(sys.argv[1])))
