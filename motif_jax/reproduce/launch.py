"""Launch the study's phases through the sweep launcher, in order, skipping what is finished.

Each phase becomes `DIR/<phase>/sweep_points.py` (a literal list of override dicts) and one
`driver.run_sweep` call, so resuming is the sweep launcher's: finished points are skipped,
running or submitted ones are not started twice, failed and interrupted ones run again. A phase
whose `needs` are not all done yet (a cluster still running them) waits for the next invocation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from motif_jax.launch import driver
from motif_jax.launch import points as points_io
from motif_jax.reproduce.study import Phase, base

SWEEP_POINTS = "sweep_points.py"


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


def command(run: driver.SweepRun) -> str:
  """The experiments.sweep command line that (re)runs this phase on its own."""
  return (f"python -m experiments.sweep --sweep={run.sweep_file} --base={run.base} "
          f"--experiment={run.experiment} --workdir={run.workdir} --launcher={run.launcher} "
          f"--parallel={run.parallel}")


def phase_states(phase: Phase, workdir: str | Path) -> dict[str, str]:
  """point name -> done | failed | running | submitted | pending."""
  return {spec.name: points_io.state(phase.point_dir(Path(workdir), spec))
          for spec in phase.points}


def run_phases(phases: list[Phase], options: LaunchOptions, *,
               log: Callable[[str], None] = print) -> dict[str, str]:
  """Launch every phase whose inputs are ready; returns phase -> status line."""
  status = {}
  for phase in phases:
    waiting = [n for n in phase.needs
               if any(s != points_io.DONE for s in
                      phase_states(_by_name(phases, n), options.workdir).values())]
    if waiting:
      status[phase.name] = f"waiting for {', '.join(waiting)}"
      log(f"== {phase.name}: {status[phase.name]} (run this command again when they finish)")
      continue
    run = sweep_run(phase, options)
    log(f"== {phase.name}: {len(phase.points)} points ({command(run)})")
    rows = driver.run_sweep(run, log=lambda m, p=phase.name: log(f"  [{p}] {m}"))
    counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
    status[phase.name] = ", ".join(f"{n} {s}" for s, n in counts.items())
  return status


def _by_name(phases: list[Phase], name: str) -> Phase:
  for phase in phases:
    if phase.name == name:
      return phase
  raise KeyError(f"phase {name!r} needed but not planned")
