"""Transparent huge pages for XLA:CPU's per-step buffers (glibc's `malloc.hugetlb` tunable).

XLA:CPU allocates each execution's temporaries afresh (the side-by-side Llama's `sft_step`: 301
MiB), and glibc serves blocks that large with a new `mmap` that it unmaps on free. Every step
then takes a page fault per 4 KiB page it touches (77,600 minor faults and 0.12 s of kernel time
per step, measured). Where transparent huge pages are `madvise`-only (the common default),
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` makes glibc advise huge pages on those blocks: about 500
faults per step, and CPU training steps 5-12% faster (README, "Training-step speed").

Tunables are read once at process start, so `python -m experiments.<name>` re-executes itself
with the tunable added (`experiments/__init__.py`) before anything heavy is imported; the PID,
arguments and other environment stay. `MOTIF_HUGE_PAGES=0` turns this off. Nothing happens on
other platforms, with glibc older than 2.35 (no such tunable), with transparent huge pages set
to `never`, or when the tunable is already given.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "MOTIF_HUGE_PAGES"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, ...] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
  except (AttributeError, ValueError, OSError):
    return None
  if name != "glibc":
    return None
  try:
    return tuple(int(part) for part in version.split(".")[:2])
  except ValueError:
    return None


def _thp_mode() -> str | None:
  """The bracketed mode of `always [madvise] never`, or None where the file is missing."""
  try:
    with open(_THP_MODE) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def huge_page_env(environ: Mapping[str, str], *, glibc: tuple[int, ...] | None,
                  thp_mode: str | None) -> dict[str, str] | None:
  """`environ` with `glibc.malloc.hugetlb=1` appended to GLIBC_TUNABLES, or None where it is
  already there, turned off, or of no use here."""
  if environ.get(OPT_OUT, "1") == "0":
    return None
  if glibc is None or glibc < (2, 35) or thp_mode in (None, "never"):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if any(item.split("=", 1)[0] == TUNABLE for item in tunables.split(":")):
    return None
  return dict(environ, GLIBC_TUNABLES=":".join(filter(None, [tunables, f"{TUNABLE}=1"])))


def is_experiment_main(argv: Sequence[str]) -> bool:
  """True for an interpreter command line `python [options] -m experiments.<name> ...`."""
  i = 1
  while i < len(argv):  # interpreter options end at -m, -c, a script or "-"
    arg = argv[i]
    if arg == "-m":
      return i + 1 < len(argv) and argv[i + 1].startswith("experiments.")
    if arg.startswith("-m"):  # -mexperiments.sft
      return arg[2:].startswith("experiments.")
    if arg in ("-W", "-X"):  # options that take the next argument
      i += 2
      continue
    if not arg.startswith("-") or arg == "-" or arg.startswith("-c"):
      return False
    i += 1
  return False


def reexec_with_huge_pages() -> None:
  """Replace this process by the same command with the tunable set, when it helps (see top)."""
  argv = getattr(sys, "orig_argv", None)
  if sys.platform != "linux" or not argv or not is_experiment_main(argv):
    return
  env = huge_page_env(os.environ, glibc=_glibc_version(), thp_mode=_thp_mode())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, argv, env)
  except OSError:  # keep running without the tunable rather than fail the job
    return
