"""The code sandbox: verdicts, and hostile programs contained (one concurrent batch, ~3 s)."""

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from motif_jax.rl import sandbox

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux namespaces")

TIMEOUT_S = 1.5  # the hostile batch's deadline
SLACK_S = 2.0  # the bound: contained within the deadline plus two seconds
MARK = f"motif-sandbox-mark-{uuid.uuid4().hex}"  # in the argv of every process that could linger


def _marked(body: str) -> str:
  """A program that re-executes `body` in a python whose argv carries MARK (for the /proc scan)."""
  return f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {body!r}, {MARK!r}])\n"


@pytest.fixture(scope="module")
def isolated():
  """Tests that need namespaces skip (naming the reason) where this machine cannot make them."""
  probe = sandbox.execute("pass", "", timeout_s=20.0)
  if probe.status == "refused":
    pytest.skip(f"no isolation on this machine: {probe.detail}")
  assert probe.status == "ok", probe


def _processes_with(text: str) -> list[int]:
  """Host pids whose command line or initial environment contains `text`."""
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    for part in ("cmdline", "environ"):
      try:
        if text.encode() in Path(f"/proc/{pid}/{part}").read_bytes():
          found.append(int(pid))
          break
      except OSError:
        pass
  return found


def test_verdicts_of_ordinary_programs(isolated):
  add = "def add(a, b):\n    return a + b\n"
  tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
  cpu_bound = ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, 2))\n"
               "while True:\n    pass\n")
  items = [
      (add + "print('hello')", tests),  # right
      (add.replace("a + b", "a - b"), tests),  # wrong answer
      ("def add(a, b:\n    return a + b\n", tests),  # syntax error
      ("def add(a, b):\n    return a + c\n", tests),  # raises NameError when tested
      ("import sys\nsys.exit(0)\n" + add, tests),  # exits before the tests run: no pass
      ("import os\nos._exit(0)\n" + add, tests),  # no result record at all: no pass
      ("x = bytearray(1 << 40)\n", ""),  # beyond the address-space limit
      (cpu_bound, ""),  # its own 1 s CPU limit (SIGXCPU) before the 8 s wall deadline
  ]
  results = sandbox.execute_many(items, max_workers=len(items), timeout_s=8.0, memory_mb=256)
  statuses = [r.status for r in results]
  assert statuses == ["ok", "failed", "error", "error", "error", "crash", "memory", "timeout"]
  assert [r.passed for r in results] == [True] + [False] * 7
  assert results[0].stdout == "hello\n" and results[0].isolation == "namespaces"
  assert "SyntaxError" in results[2].detail and "NameError" in results[3].detail
  assert "SystemExit" in results[4].detail and results[7].detail == "CPU time limit"
  assert results[7].seconds < 8.0  # stopped by the CPU limit, not the wall deadline


@pytest.fixture(scope="module")
def hostile(isolated, tmp_path_factory):
  """Runs every hostile program at once next to a bystander; returns what the test observed."""
  canary_dirs = [tmp_path_factory.mktemp("canary")]
  if os.path.isdir("/var/tmp") and os.access("/var/tmp", os.W_OK):  # writable by all, not /tmp
    canary_dirs.append(Path(tempfile.mkdtemp(prefix="sandbox-canary-", dir="/var/tmp")))
  for d in canary_dirs:
    (d / "canary.txt").write_text("precious")
  secret_name = f"MOTIF_SANDBOX_SECRET_{uuid.uuid4().hex}"
  os.environ[secret_name] = "hunter2"
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, secret_name: "hunter2"})  # in its /proc environ
  tcp = socket.create_server(("127.0.0.1", 0))
  tcp.settimeout(0.2)
  port = tcp.getsockname()[1]
  abstract = socket.socket(socket.AF_UNIX)
  abstract_name = f"\0{MARK}"
  abstract.bind(abstract_name)
  abstract.listen()
  abstract.settimeout(0.2)
  late_marker = canary_dirs[-1] / "outlived.txt"
  late_body = f"import time\ntime.sleep({TIMEOUT_S + 0.5})\nopen({str(late_marker)!r}, 'w')\n"
  programs = dict(
      loop="while True:\n    pass\n",
      marked_loop=_marked("while True:\n    pass\n"),
      fork_bomb=_marked("import os\nwhile True:\n    try:\n        os.fork()\n"
                        "    except OSError:\n        pass\n"),
      memory_bomb="chunks = []\nwhile True:\n    chunks.append(bytearray(256 << 20))\n",
      network=(
          "import socket\n"
          f"for family, address in ((socket.AF_INET, ('127.0.0.1', {port})),\n"
          f"                        (socket.AF_UNIX, {abstract_name!r})):\n"
          "    s = socket.socket(family)\n"
          "    s.settimeout(1.0)\n"
          "    try:\n"
          "        s.connect(address)\n"
          "        print('CONNECTED', family)\n"
          "    except OSError as e:\n"
          "        print('blocked', family, e)\n"),
      filesystem=(
          "import os, shutil\n"
          f"for d in {[str(d) for d in canary_dirs]!r}:\n"
          "    c = os.path.join(d, 'canary.txt')\n"
          "    for name, act in [('write', lambda: open(c, 'w').write('pwned')),\n"
          "                      ('append', lambda: open(c, 'a').write('pwned')),\n"
          "                      ('create', lambda: open(os.path.join(d, 'new.txt'), 'w')),\n"
          "                      ('chmod', lambda: os.chmod(c, 0o777)),\n"
          "                      ('rename', lambda: os.rename(c, c + '.moved')),\n"
          "                      ('remove', lambda: os.remove(c)),\n"
          "                      ('rmtree', lambda: shutil.rmtree(d))]:\n"
          "        try:\n"
          "            act()\n"
          "            print('DID', name, d)\n"
          "        except OSError as e:\n"
          "            print('denied', name, type(e).__name__)\n"),
      environment=(
          "import os\n"
          f"name = {secret_name!r}\n"
          "leaks = [k for k in os.environ if k == name]\n"
          f"for pid in sorted(set(os.listdir('/proc')) | {{'{holder.pid}', '{os.getpid()}'}}):\n"
          "    try:\n"
          "        if name.encode() in open('/proc/%s/environ' % pid, 'rb').read():\n"
          "            leaks.append(pid)\n"
          "    except OSError:\n"
          "        pass\n"
          "print('LEAK' if leaks else 'clean', leaks)\n"),
      killer=(
          "import os, signal\n"
          f"for target in (os.getppid(), {os.getpid()}, {holder.pid}, -1):\n"
          "    try:\n"
          "        os.kill(target, signal.SIGKILL)\n"
          "    except OSError as e:\n"
          "        print('denied', target, type(e).__name__)\n"),
      detached=(
          "import os, sys\n"
          "if os.fork() == 0:\n"
          "    os.setsid()\n"
          "    if os.fork() == 0:\n"
          f"        body = {late_body!r}\n"
          f"        os.execv(sys.executable, [sys.executable, '-c', body, {MARK!r}])\n"
          "    os._exit(0)\n"
          "os.wait()\n"),
      flood="import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
      bystander="import time\ntime.sleep(0.5)\ndef f():\n    return 7\n",
  )
  tests = dict.fromkeys(programs, "")
  tests["bystander"] = "assert f() == 7\n"
  start = time.monotonic()
  results = sandbox.execute_many([(programs[k], tests[k]) for k in programs],
                                 max_workers=len(programs), timeout_s=TIMEOUT_S, memory_mb=256,
                                 tail_bytes=4096)
  batch_s = time.monotonic() - start
  leftovers = _processes_with(MARK)
  time.sleep(max(0.0, start + TIMEOUT_S + 1.0 - time.monotonic()))  # past the late write
  observed = dict(results=dict(zip(programs, results)), batch_s=batch_s, leftovers=leftovers,
                  late_marker_exists=late_marker.exists(), holder_alive=holder.poll() is None,
                  canaries={d: sorted(p.name for p in d.iterdir()) for d in canary_dirs},
                  canary_text={d: (d / "canary.txt").read_text() for d in canary_dirs},
                  canary_mode={d: (d / "canary.txt").stat().st_mode for d in canary_dirs})
  connections = []
  for listener in (tcp, abstract):
    try:
      connections.append(listener.accept())
    except TimeoutError:
      pass
  observed["connections"] = connections
  yield observed
  holder.kill()
  holder.wait()
  tcp.close()
  abstract.close()
  del os.environ[secret_name]
  for d in canary_dirs[1:]:
    shutil.rmtree(d, ignore_errors=True)


def test_hostile_programs_end_within_the_deadline_and_leave_no_process(hostile):
  for name, r in hostile["results"].items():
    assert r.seconds <= TIMEOUT_S + SLACK_S, (name, r)
    assert r.isolation == "namespaces", (name, r)
  assert hostile["batch_s"] <= TIMEOUT_S + SLACK_S + 1.0  # + launch of a dozen at once
  assert hostile["leftovers"] == [] and _processes_with(MARK) == []
  assert not hostile["late_marker_exists"]  # the detached grandchild never got to write


@pytest.mark.parametrize("name", ["loop", "marked_loop", "fork_bomb"])
def test_runaway_programs_time_out(hostile, name):
  r = hostile["results"][name]
  assert r.status == "timeout" and not r.passed and r.seconds >= TIMEOUT_S


def test_memory_bomb_hits_the_address_space_limit(hostile):
  r = hostile["results"]["memory_bomb"]
  assert r.status == "memory" and r.seconds < TIMEOUT_S


def test_no_network_not_even_loopback(hostile):
  r = hostile["results"]["network"]
  assert r.status == "ok" and r.stdout.count("blocked") == 2 and "CONNECTED" not in r.stdout
  assert hostile["connections"] == []


def test_nothing_outside_its_directory_changes(hostile):
  r = hostile["results"]["filesystem"]
  assert r.status == "ok" and "DID" not in r.stdout, r.stdout
  for d, names in hostile["canaries"].items():
    assert names == ["canary.txt"], d
    assert hostile["canary_text"][d] == "precious"
    assert hostile["canary_mode"][d] & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_parent_environment_is_unreadable(hostile):
  r = hostile["results"]["environment"]
  assert r.status == "ok" and r.stdout.startswith("clean"), r.stdout


def test_killing_its_parent_hits_nothing_outside(hostile):
  r = hostile["results"]["killer"]
  assert r.status == "ok"  # it survived its own kill -9 -1 and reported
  assert str(os.getpid()) in r.stdout and "ProcessLookupError" in r.stdout  # pid not in its ns
  assert hostile["holder_alive"]
  assert hostile["results"]["bystander"].status == "ok"  # a neighbouring sandbox is untouched


def test_detached_grandchild_does_not_outlive_the_run(hostile):
  r = hostile["results"]["detached"]
  assert r.status == "ok" and r.seconds < TIMEOUT_S, r  # the run itself ends at once


def test_output_flood_is_capped_and_stopped_early(hostile):
  r = hostile["results"]["flood"]
  assert r.status == "crash" and "output limit" in r.detail
  assert 0 < len(r.stdout) <= 4096 and r.seconds < TIMEOUT_S


def test_refuses_without_isolation_unless_weak_isolation_is_allowed():
  program, tests = "def f():\n    return 1\n", "assert f() == 1\n"
  refused = sandbox.execute(program, tests, timeout_s=2.0, unshare="/nonexistent/unshare")
  assert refused.status == "refused" and not refused.passed
  assert "isolation unavailable" in refused.detail
  weak = sandbox.execute(program, tests, timeout_s=5.0, unshare="/nonexistent/unshare",
                         allow_weak_isolation=True)
  assert (weak.status, weak.isolation) == ("ok", "weak")
  wrong = sandbox.execute(program, "assert f() == 2\n", timeout_s=5.0,
                          unshare="/nonexistent/unshare", allow_weak_isolation=True)
  assert wrong.status == "failed"


def test_bad_limits_are_a_status_not_an_exception():
  r = sandbox.execute("pass", "", timeout_s=0)
  assert r.status == "refused" and "sandbox.timeout_s=0" in r.detail


def test_config_section_matches_execute_defaults():
  from configs import common  # noqa: PLC0415
  cfg = sandbox.SandboxConfig.from_config_dict(common.sandbox())
  assert dataclasses.asdict(cfg) == {
      k: v for k, v in sandbox.execute.__kwdefaults__.items() if k not in ("unshare", "setpriv")}
  with pytest.raises(ValueError, match="sandbox.memory_mb=0 must be positive"):
    sandbox.SandboxConfig.from_config_dict(common.sandbox(memory_mb=0))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv")
                    or not os.path.exists("/usr/bin/python3"), reason="needs root to test non-root")
def test_unprivileged_caller_uses_a_user_namespace():
  """A non-root caller (uid 65534 here) gets the same containment via --user --map-root-user."""
  tmp_path = Path(tempfile.mkdtemp(prefix="sandbox-user-"))  # pytest's tmp_path is root-only
  module = tmp_path / "sandbox_copy.py"  # stdlib-only module, readable by the unprivileged uid
  shutil.copy(sandbox.__file__, module)
  script = tmp_path / "caller.py"
  script.write_text(
      "import importlib.util, sys\n"
      f"spec = importlib.util.spec_from_file_location('sb', {str(module)!r})\n"
      "sb = importlib.util.module_from_spec(spec); sys.modules['sb'] = sb\n"
      "spec.loader.exec_module(sb)\n"
      "rs = sb.execute_many([('def f():\\n    return 3\\n', 'assert f() == 3'),\n"
      "                      ('open(\"/var/tmp/x\", \"w\")', ''),\n"
      "                      ('while True:\\n    pass\\n', '')], timeout_s=1.5)\n"
      "print([(r.status, r.isolation) for r in rs])\n"
      "print(rs[0].detail)\n")
  for p in (tmp_path, module, script):
    p.chmod(0o755)
  try:
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "/usr/bin/python3", "-I", str(script)], capture_output=True,
                         text=True, timeout=30, cwd="/")
  finally:
    shutil.rmtree(tmp_path)
  if "refused" in out.stdout:  # e.g. unprivileged user namespaces disabled by the kernel
    pytest.skip(f"no user namespaces for non-root here: {out.stdout.splitlines()[-1]}")
  assert out.stdout.splitlines()[0] == str([("ok", "namespaces"), ("error", "namespaces"),
                                     ("timeout", "namespaces")]), out.stderr
