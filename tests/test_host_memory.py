"""`python -m experiments.*` re-executes itself with glibc's huge-page malloc tunable, and only
where that is asked for and can act (motif_jax/launch/host_memory.py)."""

import os
import sys

import pytest

from motif_jax.launch import host_memory

GLIBC, THP = (2, 36), "madvise"


def test_the_tunable_is_added_and_the_rest_of_the_environment_kept():
  env = host_memory.huge_page_env({"PATH": "/bin", "XLA_FLAGS": "--x"}, glibc=GLIBC, thp_mode=THP)
  assert env == {"PATH": "/bin", "XLA_FLAGS": "--x", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_existing_tunables_are_kept_and_the_new_one_appended():
  env = host_memory.huge_page_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, glibc=GLIBC,
                                  thp_mode="always")
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ, glibc, thp", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, THP),  # the user's own choice stands
    ({"GLIBC_TUNABLES": "a.b=1:glibc.malloc.hugetlb=2"}, GLIBC, THP),
    ({"MOTIF_HUGE_PAGES": "0"}, GLIBC, THP),  # opted out
    ({}, (2, 34), THP),  # glibc before the tunable existed
    ({}, None, THP),  # not glibc (musl, macOS)
    ({}, GLIBC, "never"),  # huge pages switched off on the host
    ({}, GLIBC, None),  # no transparent huge pages at all
])
def test_nothing_changes_where_it_is_set_turned_off_or_cannot_act(environ, glibc, thp):
  assert host_memory.huge_page_env(environ, glibc=glibc, thp_mode=thp) is None


@pytest.mark.parametrize("argv, expected", [
    (["python", "-m", "experiments.sft", "--config=x"], True),
    (["python3", "-u", "-X", "dev", "-m", "experiments.bench_step"], True),
    (["python", "-mexperiments.rl"], True),
    (["python", "-m", "pytest", "-m", "experiments.sft"], False),  # pytest's own -m
    (["python", "script.py", "-m", "experiments.sft"], False),  # a script's arguments
    (["python", "-c", "import experiments", "-m", "experiments.sft"], False),
    (["python", "-m", "experimentsx.sft"], False),
    (["python"], False),
])
def test_only_an_experiments_module_run_counts_as_an_entry_point(argv, expected):
  assert host_memory.is_experiment_main(argv) is expected


class _Execed(Exception):
  pass


def _patch(monkeypatch, argv, environ):
  calls = []

  def execve(path, args, env):
    calls.append((path, args, env))
    raise _Execed
  monkeypatch.setattr(sys, "orig_argv", argv)
  monkeypatch.setattr(sys, "platform", "linux")
  monkeypatch.setattr(os, "execve", execve)
  monkeypatch.setattr(host_memory, "_glibc_version", lambda: GLIBC)
  monkeypatch.setattr(host_memory, "_thp_mode", lambda: THP)
  for name in ("GLIBC_TUNABLES", "MOTIF_HUGE_PAGES"):
    monkeypatch.delenv(name, raising=False)
  for name, value in environ.items():
    monkeypatch.setenv(name, value)
  return calls


def test_reexec_replaces_the_process_with_the_same_command_and_the_tunable(monkeypatch):
  argv = ["python", "-m", "experiments.sft", "--workdir=/tmp/w"]
  calls = _patch(monkeypatch, argv, {"KEEP_ME": "1"})
  with pytest.raises(_Execed):
    host_memory.reexec_with_huge_pages()
  (path, args, env), = calls
  assert path == sys.executable and args == argv
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and env["KEEP_ME"] == "1"


@pytest.mark.parametrize("argv, environ", [
    (["python", "-m", "pytest", "tests"], {}),  # imported, not run: tests, notebooks
    (["python", "-m", "experiments.sft"], {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),  # done
    (["python", "-m", "experiments.sft"], {"MOTIF_HUGE_PAGES": "0"}),
])
def test_no_reexec_when_imported_already_done_or_turned_off(monkeypatch, argv, environ):
  calls = _patch(monkeypatch, argv, environ)
  host_memory.reexec_with_huge_pages()
  assert calls == []


def test_a_failed_exec_leaves_the_job_running(monkeypatch):
  _patch(monkeypatch, ["python", "-m", "experiments.sft"], {})

  def execve(path, args, env):
    raise PermissionError("noexec mount")
  monkeypatch.setattr(os, "execve", execve)
  host_memory.reexec_with_huge_pages()  # returns instead of raising
