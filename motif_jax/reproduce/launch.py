"""Launch the study's phases through the sweep launcher, in order, skipping what is finished.

Each phase becomes `DIR/<phase>/sweep_points.py` (a literal list of override dicts) and one
`driver.run_sweep` call, so resuming is the sweep launcher's: finished points are skipped,
running or submitted ones are not started twice, failed and interrupted ones run again. A phase
whose `needs` are not all done yet (a cluster still running them) waits for the next invocation.
"""

from __future__ import annotations

import collections
import dataclasses
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from motif_jax.launch import driver
from motif_jax.launch import points as points_io
from motif_jax.reproduce.study import Phase, base

SWEEP_POINTS = "sweep_points.py"
SWEEP_LOG = "sweep_log.txt"


@dataclasses.dataclass(frozen=True)
class LaunchOptions:
  config_file: str  # configs/reproduce.py (the bases are its run=... variants)
  variant: str  # "" (full) | "smoke"
  workdir: str
  launcher: str = "local"
  parallel: int = 1


def sweep_file_text(phase: Phase) -> str:
  lines = [f'"""Points of the reproduce study\'s `{phase.name}` phase (written by '
           'experiments.reproduce)."""', "", "", "def get_sweep():", "  return ["]
  lines += [f"      {spec.overrides!r},  # {spec.condition}, seed {spec.seed}"
            for spec in phase.points]
  lines += ["  ]", ""]
  return "\n".join(lines)


def sweep_run(phase: Phase, options: LaunchOptions) -> driver.SweepRun:
  """Write the phase's sweep file; the sweep run that launches (or resumes) it."""
  phase_dir = Path(options.workdir).absolute() / phase.name
  phase_dir.mkdir(parents=True, exist_ok=True)
  sweep_file = phase_dir / SWEEP_POINTS
  text = sweep_file_text(phase)
  if not sweep_file.exists() or sweep_file.read_text() != text:
    sweep_file.write_text(text)
  return driver.SweepRun(sweep_file=str(sweep_file),
                         base=base(options.config_file, options.variant, phase.run),
                         workdir=str(phase_dir), experiment=phase.experiment,
                         launcher=options.launcher, parallel=options.parallel)


def command_argv(run: driver.SweepRun) -> list[str]:
  """The experiments.sweep arguments that (re)run this phase on its own."""
  return ["-m", "experiments.sweep", f"--sweep={run.sweep_file}", f"--base={run.base}",
          f"--experiment={run.experiment}", f"--workdir={run.workdir}",
          f"--launcher={run.launcher}", f"--parallel={run.parallel}"]


def command(run: driver.SweepRun) -> str:
  return " ".join(["python", *map(shlex.quote, command_argv(run))])


def phase_states(phase: Phase, workdir: str | Path) -> dict[str, str]:
  """point name -> done | failed | running | submitted | pending."""
  return {spec.name: points_io.state(phase.point_dir(Path(workdir), spec))
          for spec in phase.points}


def run_phases(phases: list[Phase], options: LaunchOptions, *,
               log: Callable[[str], None] = print) -> dict[str, str]:
  """Launch every phase whose inputs are ready; returns phase -> status line.

  With `parallel` > 1, single-run phases that need nothing (the probe, the memory run) run beside
  the others as their own `experiments.sweep` process (output in DIR/<phase>/sweep_log.txt), so
  one long run does not leave the other cores idle; the rest run here, in order. With
  `parallel` = 1 every phase runs here, one run at a time.
  """
  status: dict[str, str] = {}
  beside = [p for p in phases if len(p.points) == 1 and not p.needs and options.parallel > 1]
  procs = {}
  for phase in beside:
    run = sweep_run(phase, options)
    log(f"== {phase.name}: 1 point, beside the others ({command(run)})")
    with open(Path(run.workdir) / SWEEP_LOG, "a") as out:
      procs[phase.name] = subprocess.Popen([sys.executable, *command_argv(run)],
                                           stdout=out, stderr=subprocess.STDOUT)
  try:
    for phase in phases:
      if phase not in beside:
        _run_phase(phase, phases, options, status, log)
  finally:
    for name, proc in procs.items():
      code = proc.wait()
      states = phase_states(_by_name(phases, name), options.workdir)
      status[name] = ", ".join(f"{n} {s}" for s, n in collections.Counter(
          states.values()).items()) + ("" if code == 0 else f" (sweep exit code {code})")
      log(f"  [{name}] points: {status[name]}")
  return {p.name: status[p.name] for p in phases}


def _run_phase(phase: Phase, phases: list[Phase], options: LaunchOptions, status: dict,
               log: Callable[[str], None]) -> None:
  waiting = [n for n in phase.needs
             if any(s != points_io.DONE for s in
                    phase_states(_by_name(phases, n), options.workdir).values())]
  if waiting:
    status[phase.name] = f"waiting for {', '.join(waiting)}"
    log(f"== {phase.name}: {status[phase.name]} (run this command again when they finish)")
    return
  run = sweep_run(phase, options)
  log(f"== {phase.name}: {len(phase.points)} points ({command(run)})")
  rows = driver.run_sweep(run, log=lambda m: log(f"  [{phase.name}] {m}"))
  counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
  status[phase.name] = ", ".join(f"{n} {s}" for s, n in counts.items())


def _by_name(phases: list[Phase], name: str) -> Phase:
  for phase in phases:
    if phase.name == name:
      return phase
  raise KeyError(f"phase {name!r} needed but not planned")
