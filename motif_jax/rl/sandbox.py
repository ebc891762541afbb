"""Run an untrusted Python program against its unit tests in an isolated, limited process tree.

`execute(program, tests, timeout_s=..., memory_mb=...) -> Result` never raises. Isolation comes
from util-linux, not from code of ours: `unshare` puts the run in new PID, mount, network, IPC,
UTS and cgroup namespaces (plus a user namespace with `--map-root-user` when the caller is not
root), and `setpriv` drops to no capabilities (and, for a root caller, to a fresh unprivileged
uid, so RLIMIT_NPROC binds and root-only files stay unreadable). Inside, the namespace's init
(this module's `_SETUP`, still privileged inside the namespaces):
  1. remounts every visible mount read-only (in its private mount namespace only),
  2. mounts fresh size-limited tmpfs on /tmp (the working directory, HOME and TMPDIR) and
     /dev/shm, and an empty read-only tmpfs over /run (host sockets),
  3. starts the runner (`_RUNNER`) under setpriv, reaps orphans, and exits with the runner.
When the init exits, the kernel kills every process left in the PID namespace, so detached
grandchildren die with it; at the deadline the parent SIGKILLs unshare and the init (unshare's
`--kill-child` is the backstop) and waits until the init, and so the namespace, is gone.

The runner reads the job (a nonce, the program, the tests) from a memfd on stdin, closes it, sets
rlimits (CPU time, address space, processes, file size, open files, no core files), executes the
program and then the tests in one `__main__` namespace, and writes `<nonce> <json>` to a result
pipe. Outcome: tests pass -> ok; AssertionError -> failed; MemoryError -> memory; any other
exception (SyntaxError, SystemExit, ...) -> error; wall deadline or CPU limit -> timeout; no
result (killed by a signal, os._exit, output beyond `output_limit_bytes`) -> crash; isolation
unavailable -> refused (unless `allow_weak_isolation=True`: then a plain child process with the
same rlimits, a temp directory and an empty environment, but no namespaces). See README "Code
sandbox" for what this does and does not protect against.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence

STATUSES = ("ok", "failed", "timeout", "memory", "error", "crash", "refused")
_CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
_UID_BASE, _UID_SPAN = 1 << 20, 1 << 20  # root callers run each program as a fresh unused uid
_READY = b"ready\n"


@dataclasses.dataclass(frozen=True)
class Result:
  passed: bool
  status: str  # one of STATUSES
  stdout: str  # the last `tail_bytes` of the program's stdout
  stderr: str  # ... and of its stderr
  seconds: float  # wall time, launch to teardown
  detail: str = ""  # one line: the exception, signal or reason for refusal
  isolation: str = ""  # "namespaces" | "weak" | "" (refused)


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """`config.sandbox` (configs/common.py: sandbox); `execute(p, t, **dataclasses.asdict(cfg))`."""

  timeout_s: float  # wall deadline per program, launch included
  memory_mb: int  # RLIMIT_AS per process
  max_processes: int  # RLIMIT_NPROC (threads count too)
  file_mb: int  # RLIMIT_FSIZE: largest file the program may write
  open_files: int  # RLIMIT_NOFILE
  disk_mb: int  # size of each private tmpfs (/tmp, /dev/shm)
  tail_bytes: int  # stdout/stderr bytes kept (the tail)
  output_limit_bytes: int  # more stdout+stderr than this kills the run (status crash)
  python: str  # interpreter inside the sandbox; "" = this one if the sandbox uid can run it
  allow_weak_isolation: bool  # no namespaces available: run anyway (True) or refuse (False)

  def __post_init__(self):
    for name in ("timeout_s", "memory_mb", "max_processes", "file_mb", "open_files", "disk_mb",
                 "tail_bytes", "output_limit_bytes"):
      if not getattr(self, name) > 0:
        raise ValueError(f"sandbox.{name}={getattr(self, name)!r} must be positive")

  @classmethod
  def from_config_dict(cls, config) -> "SandboxConfig":
    from motif_jax import typed_config  # noqa: PLC0415 (keeps this module stdlib-only)
    return typed_config.build(cls, config, "sandbox")


# ---- code that runs inside the sandbox (python -I -S -c / python -I -c) -----------------------

_SETUP = r'''
import json, os, subprocess, sys
a = json.loads(sys.argv[1])
def die(msg):
    sys.stderr.write("sandbox setup: " + msg + "\n"); os._exit(125)
def unescape(s):  # mountinfo escapes space, tab, newline, backslash as \ooo
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8))); i += 4
        else:
            out.append(s[i]); i += 1
    return "".join(out)
mounts = {}
with open("/proc/self/mountinfo") as f:
    for line in f:
        p = line.split()
        mounts[p[0]] = (p[1], unescape(p[4]))
covered = {parent for mid, (parent, target) in mounts.items()
           if parent in mounts and mounts[parent][1] == target}
def visible(mid):  # not under a later mount at the same place, and its parents too
    seen = set()
    while mid in mounts and mid not in seen:
        seen.add(mid)
        if mid in covered: return False
        mid = mounts[mid][0]
    return True
for mid, (_, target) in mounts.items():
    if visible(mid) and os.path.exists(target):
        r = subprocess.run(["mount", "-o", "remount,bind,ro", target], capture_output=True)
        if r.returncode:
            die("read-only remount of %s failed: %s" % (target, r.stderr.decode().strip()))
owner = ",uid=%d,gid=%d" % (a["uid"], a["uid"]) if a["uid"] else ""
for target, opts in (("/tmp", "mode=0700" + owner), ("/dev/shm", "mode=0700" + owner),
                     ("/run", "ro,mode=0755")):
    if os.path.isdir(target):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "nosuid,nodev,size=%dm,%s"
                            % (a["disk_mb"], opts), "tmpfs", target], capture_output=True)
        if r.returncode:
            die("tmpfs on %s failed: %s" % (target, r.stderr.decode().strip()))
os.chdir("/tmp")
os.set_inheritable(a["fd"], True)
os.write(a["fd"], b"ready\n")
child = os.posix_spawn(a["argv"][0], a["argv"], a["env"])
while True:  # init: reap orphans until the runner exits; the kernel then kills the rest
    try:
        pid, status = os.wait()
    except ChildProcessError:
        os._exit(125)
    if pid == child:
        os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
'''

_RUNNER = r'''
import json, os, resource, sys
write, exit_, dumps, flush = os.write, os._exit, json.dumps, None
fd, cpu, mem, nproc, fsize, nofile = map(int, sys.argv[1:7])
job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
nul = os.open(os.devnull, os.O_RDONLY); os.dup2(nul, 0); os.close(nul)
os.set_inheritable(fd, False)
nonce = job.pop("nonce")
def report(status, detail=""):
    for s in (sys.stdout, sys.stderr):
        try: s.flush()
        except BaseException: pass
    write(fd, (nonce + " " + dumps({"status": status, "detail": detail[:500]}) + "\n").encode())
    exit_(0)
for which, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, mem),
                     (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_FSIZE, fsize),
                     (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_CORE, 0)):
    hard = value + 1 if which == resource.RLIMIT_CPU else value  # SIGXCPU before SIGKILL
    resource.setrlimit(which, (value, hard))
scope = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(compile(job.pop("program"), "program.py", "exec"), scope)
    exec(compile(job.pop("tests"), "tests.py", "exec"), scope)
except AssertionError as e:
    report("failed", "AssertionError: %s" % e)
except MemoryError:
    report("memory", "MemoryError")
except BaseException as e:
    try:
        import traceback; traceback.print_exc()
    except BaseException: pass
    report("error", "%s: %s" % (type(e).__name__, e))
report("ok")
'''


# ---- launching --------------------------------------------------------------------------------

def _world_runnable(path: str) -> bool:
  """Whether an unprivileged stranger can run `path` (o+x on the file and every directory)."""
  real = os.path.realpath(path)
  parts = [real] + [os.path.dirname(real)]
  while parts[-1] != "/":
    parts.append(os.path.dirname(parts[-1]))
  try:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in parts)
  except OSError:
    return False


def _interpreter(python: str, as_stranger: bool) -> str | None:
  if python:
    return python
  candidates = [sys.executable] + ([shutil.which("python3", path=_CLEAN_PATH) or ""]
                                   if as_stranger else [])
  for path in candidates:
    if path and (not as_stranger or _world_runnable(path)):
      return path
  return None


def _runner_argv(python: str, fd: int, timeout_s: float, memory_mb: int, max_processes: int,
                 file_mb: int, open_files: int) -> list[str]:
  limits = (int(timeout_s) + 1, memory_mb << 20, max_processes, file_mb << 20, open_files)
  return [python, "-I", "-c", _RUNNER, str(fd), *map(str, limits)]


def _job_fd(program: str, tests: str, nonce: str) -> int:
  data = json.dumps(dict(nonce=nonce, program=program, tests=tests)).encode("utf-8")
  fd = os.memfd_create("sandbox-job", os.MFD_CLOEXEC)
  os.write(fd, data)
  os.lseek(fd, 0, os.SEEK_SET)
  return fd


def _namespace_init(pid: int) -> int | None:
  """A pidfd for unshare's forked child (the namespace's init), if it is still there."""
  try:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
      children = f.read().split()
    if not children:
      return None
    pidfd = os.pidfd_open(int(children[0]))
    with open(f"/proc/{children[0]}/stat") as f:  # still unshare's child (not a reused pid)
      ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    if ppid != pid:
      os.close(pidfd)
      return None
    return pidfd
  except (OSError, ValueError, IndexError):
    return None


class _Tail:
  def __init__(self, keep: int):
    self.keep, self.data, self.total = keep, bytearray(), 0

  def add(self, chunk: bytes):
    self.total += len(chunk)
    self.data += chunk
    if len(self.data) > 2 * self.keep:
      del self.data[:-self.keep]

  def text(self) -> str:
    return bytes(self.data[-self.keep:]).decode("utf-8", errors="replace")


def _run(argv: list[str], env: dict, stdin_fd: int, result_w: int, result_r: int, *, cwd: str,
         timeout_s: float, tail_bytes: int, output_limit_bytes: int, isolated: bool):
  """Launch, collect output and the result record under the deadline, then kill the tree."""
  start = time.monotonic()
  deadline = start + timeout_s
  proc = subprocess.Popen(argv, stdin=stdin_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          pass_fds=(result_w,), env=env, cwd=cwd, start_new_session=True)
  os.close(result_w)
  init_fd, outs, record = None, {}, bytearray()
  timed_out = flooded = False
  with selectors.DefaultSelector() as sel:
    for name, f in (("stdout", proc.stdout), ("stderr", proc.stderr)):
      outs[name] = _Tail(tail_bytes)
      sel.register(f.fileno(), selectors.EVENT_READ, name)
    sel.register(result_r, selectors.EVENT_READ, "result")
    while sel.get_map() and not (timed_out or flooded):
      remaining = deadline - time.monotonic()
      if remaining <= 0:
        timed_out = True
        break
      for key, _ in sel.select(remaining):
        chunk = os.read(key.fd, 1 << 16)
        if not chunk:
          sel.unregister(key.fd)
        elif key.data == "result":
          if isolated and init_fd is None and not record:
            init_fd = _namespace_init(proc.pid)
          record += chunk[:max(0, (1 << 16) - len(record))]
        else:
          outs[key.data].add(chunk)
          flooded = sum(t.total for t in outs.values()) > output_limit_bytes
  if not (timed_out or flooded):
    try:  # the pipes can close before the processes end (a program may close its fds)
      proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      timed_out = True
  _kill(proc, init_fd)
  for f in (proc.stdout, proc.stderr):
    f.close()
  return proc.returncode, outs, bytes(record), timed_out, flooded, time.monotonic() - start


def _kill(proc: subprocess.Popen, init_fd: int | None):
  """SIGKILL the namespace's init and unshare's process group; wait until the init is gone."""
  if init_fd is not None:
    try:
      signal.pidfd_send_signal(init_fd, signal.SIGKILL)
    except OSError:
      pass
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except OSError:
    pass
  proc.wait()
  if init_fd is not None:  # the init exits only after every process in its namespace is gone
    with selectors.DefaultSelector() as sel:
      sel.register(init_fd, selectors.EVENT_READ)
      sel.select(10.0)
    os.close(init_fd)


def _outcome(returncode: int, outs: dict, record: bytes, timed_out: bool, flooded: bool,
             seconds: float, nonce: str, timeout_s: float, isolation: str) -> Result:
  status, detail = "crash", ""
  for line in record.split(b"\n"):
    if line.startswith(nonce.encode() + b" "):
      try:
        found = json.loads(line[len(nonce) + 1:])
        status, detail = found["status"], found["detail"]
      except (ValueError, KeyError, TypeError):
        pass
      break
  if timed_out:
    status, detail = "timeout", f"wall deadline of {timeout_s:g} s"
  elif flooded:
    status, detail = "crash", "output limit exceeded (killed)"
  elif status == "crash" or status not in STATUSES:
    sig = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if sig == signal.SIGXCPU:
      status, detail = "timeout", "CPU time limit"
    else:
      status = "crash"
      detail = (f"killed by {signal.Signals(sig).name}" if sig in signal.valid_signals()
                else f"exited with code {returncode} without a result")
  return Result(status == "ok", status, outs["stdout"].text(), outs["stderr"].text(),
                round(seconds, 4), detail, isolation)


def _refused(detail: str, seconds: float = 0.0) -> Result:
  return Result(False, "refused", "", "", round(seconds, 4), detail, "")


def execute(program: str, tests: str, *, timeout_s: float = 5.0, memory_mb: int = 512,
            max_processes: int = 32, file_mb: int = 16, open_files: int = 64,
            disk_mb: int = 64, tail_bytes: int = 16384, output_limit_bytes: int = 4 << 20,
            python: str = "", allow_weak_isolation: bool = False,
            unshare: str = "unshare", setpriv: str = "setpriv") -> Result:
  """Run `program` then `tests` (Python source) in a fresh sandbox; never raises.

  Args:
    python: the interpreter inside the sandbox ("" = this one, or for a root caller the first
      of this one and the system python3 that an unprivileged uid can run). Programs can import
      what that interpreter's site-packages hold.
    unshare, setpriv: the util-linux tools (paths or names on PATH); a missing or failing tool
      means no isolation: status `refused`, unless `allow_weak_isolation`.
  """
  start = time.monotonic()
  try:
    SandboxConfig(timeout_s, memory_mb, max_processes, file_mb, open_files, disk_mb, tail_bytes,
                  output_limit_bytes, python, allow_weak_isolation)
  except ValueError as e:
    return _refused(str(e))
  limits = dict(timeout_s=timeout_s, memory_mb=memory_mb, max_processes=max_processes,
                file_mb=file_mb, open_files=open_files)
  collect = dict(timeout_s=timeout_s, tail_bytes=tail_bytes,
                 output_limit_bytes=output_limit_bytes)
  try:
    result = _isolated(program, tests, python, disk_mb, unshare, setpriv, limits, collect)
    if result.status == "refused" and allow_weak_isolation:
      return _weak(program, tests, python, limits, collect)
    return result
  except Exception as e:  # noqa: BLE001 (the caller gets a status, never an exception)
    return Result(False, "crash", "", "", round(time.monotonic() - start, 4),
                  f"sandbox failure: {type(e).__name__}: {e}", "")


def _isolated(program, tests, python, disk_mb, unshare, setpriv, limits, collect) -> Result:
  root = os.geteuid() == 0
  tools = [shutil.which(t) for t in (unshare, setpriv)]
  if not all(tools):
    return _refused(f"isolation unavailable: {unshare!r} or {setpriv!r} not found "
                    "(install util-linux, or pass allow_weak_isolation=True)")
  interpreter = _interpreter(python, as_stranger=root)
  if interpreter is None:
    return _refused("no python interpreter an unprivileged uid can run; pass python=")
  uid = _UID_BASE + (os.getpid() * 4099 + time.monotonic_ns()) % _UID_SPAN if root else 0
  privs = ([f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if root else []) + [
      "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
  env = dict(PATH=_CLEAN_PATH, HOME="/tmp", TMPDIR="/tmp", LANG="C.UTF-8")
  nonce = secrets.token_hex(16)
  result_r, result_w = os.pipe()
  job = _job_fd(program, tests, nonce)
  try:
    runner = [tools[1], *privs, *_runner_argv(interpreter, result_w, **limits)]
    args = json.dumps(dict(fd=result_w, uid=uid, disk_mb=disk_mb, argv=runner, env=env))
    argv = [tools[0], "--fork", "--kill-child", "--pid", "--mount-proc", "--mount", "--net",
            "--ipc", "--uts", "--cgroup", *([] if root else ["--user", "--map-root-user"]),
            "--", sys.executable, "-I", "-S", "-c", _SETUP, args]
    env_setup = dict(PATH="/usr/sbin:/usr/bin:/sbin:/bin", LANG="C.UTF-8")
    returncode, outs, record, timed_out, flooded, seconds = _run(
        argv, env_setup, job, result_w, result_r, cwd="/", isolated=True, **collect)
  finally:
    os.close(job)
    os.close(result_r)
  if not record.startswith(_READY) and not timed_out:
    return _refused("isolation unavailable: " + outs["stderr"].text().strip()[-500:], seconds)
  return _outcome(returncode, outs, record, timed_out, flooded, seconds, nonce,
                  collect["timeout_s"], "namespaces")


def _weak(program, tests, python, limits, collect) -> Result:
  """No namespaces: a plain child in its own session, rlimits, a temp dir, an empty env."""
  nonce = secrets.token_hex(16)
  result_r, result_w = os.pipe()
  job = _job_fd(program, tests, nonce)
  workdir = tempfile.mkdtemp(prefix="sandbox-")
  try:
    argv = _runner_argv(python or sys.executable, result_w, **limits)
    env = dict(PATH=_CLEAN_PATH, HOME=workdir, TMPDIR=workdir, LANG="C.UTF-8")
    returncode, outs, record, timed_out, flooded, seconds = _run(
        argv, env, job, result_w, result_r, cwd=workdir, isolated=False, **collect)
  finally:
    os.close(job)
    os.close(result_r)
    shutil.rmtree(workdir, ignore_errors=True)
  return _outcome(returncode, outs, record, timed_out, flooded, seconds, nonce,
                  collect["timeout_s"], "weak")


def execute_many(items: Iterable[tuple[str, str]], *, max_workers: int | None = None,
                 **kwargs) -> list[Result]:
  """`execute` over (program, tests) pairs, at most `max_workers` at once; results in order."""
  items: Sequence[tuple[str, str]] = list(items)
  if not items:
    return []
  workers = max(1, min(len(items), max_workers or os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sandbox") as pool:
    return list(pool.map(lambda item: execute(item[0], item[1], **kwargs), items))
