"""Run a sweep: expand it, give every point its workdir, launch what is left to run on the
chosen engine, and write the results table and plot.

Resumable: run the same command again. Finished points are skipped, points running elsewhere
(a fresh lock) or submitted to a cluster are not started twice, failed and interrupted points run
again (their experiment resumes from its own checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from motif_jax.launch import local, points, results, sweep as sweep_lib

SWEEP_FILE = "sweep.json"
LAUNCHERS = ("local", "slurm", "skypilot")


@dataclasses.dataclass(frozen=True)
class SweepRun:
  sweep_file: str
  base: str  # configs/<file>.py[:variant]
  workdir: str
  experiment: str = "sft"  # experiments.<name>, or a full module path (with a dot)
  launcher: str = "local"
  parallel: int = 1
  resubmit: bool = False  # submit points marked submitted again (slurm, skypilot)

  def __post_init__(self):
    if self.launcher not in LAUNCHERS:
      raise ValueError(f"--launcher={self.launcher!r} must be one of {LAUNCHERS}")
    if self.parallel < 1:
      raise ValueError(f"--parallel={self.parallel} must be >= 1")

  @property
  def module(self) -> str:
    return self.experiment if "." in self.experiment else f"experiments.{self.experiment}"


def prepare(run: SweepRun) -> tuple[sweep_lib.Sweep, list[Path]]:
  """Expand the sweep and write each point's point.json and config.json; returns point dirs."""
  sweep = sweep_lib.load_sweep(run.sweep_file)
  expanded = sweep_lib.expand(sweep, run.base)
  workdir = Path(run.workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  record = {"base": run.base, "experiment": run.module, "points": [p.name for p in expanded]}
  previous = points.read_json(workdir / SWEEP_FILE)
  if previous is not None and (previous["base"], previous["experiment"]) != (run.base, run.module):
    raise ValueError(f"--workdir={run.workdir} holds a sweep of {previous['experiment']} on "
                     f"{previous['base']}; use a fresh workdir for --base={run.base}")
  points.write_json(workdir / SWEEP_FILE, {**(previous or {}), **record})
  dirs = []
  for point in expanded:
    point_dir = workdir / point.name
    point_dir.mkdir(exist_ok=True)
    argv = ["-m", run.module, *sweep_lib.command_args(run.base, point.all_overrides),
            f"--workdir={point_dir}"]
    points.write_json(point_dir / points.POINT_FILE, {
        "name": point.name, "overrides": point.overrides, "derived": point.derived,
        "argv": argv})
    (point_dir / "config.json").write_text(json.dumps(point.config.to_dict(), indent=2,
                                                      default=str))
    dirs.append(point_dir)
  return sweep, dirs


def to_launch(point_dirs: list[Path], *, resubmit: bool) -> list[Path]:
  wanted = {points.PENDING, points.FAILED} | ({points.SUBMITTED} if resubmit else set())
  return [d for d in point_dirs if points.state(d) in wanted]


def run_sweep(run: SweepRun, *, engine_options=None,
              log: Callable[[str], None] = print) -> list[dict]:
  """Launch the points that still need to run; returns the results rows (also written)."""
  sweep, dirs = prepare(run)
  todo = to_launch(dirs, resubmit=run.resubmit)
  skipped = {d.name: points.state(d) for d in dirs if d not in todo}
  for name, state in sorted(skipped.items()):
    log(f"skip {name}: {state}")
  if todo:
    log(f"launching {len(todo)} of {len(dirs)} points with {run.launcher}")
    _launch(run, todo, engine_options, log)
  rows = results.collect(dirs, fields=sweep.swept_fields, metrics=sweep.metrics, goal=sweep.goal)
  out = results.write_all(rows, Path(run.workdir).absolute(), fields=sweep.swept_fields,
                          metric=sweep.metric, goal=sweep.goal)
  for row, point_dir in zip(rows, dirs):
    if row["status"] == points.FAILED:
      log(f"FAILED {row['point']}; end of {point_dir / points.LOG_FILE}:\n"
          f"{points.log_tail(point_dir)}")
  counts = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
  log(f"points: {counts}; results in {out['md']}")
  return rows


def _launch(run: SweepRun, todo: list[Path], engine_options, log: Callable[[str], None]) -> None:
  workdir = Path(run.workdir).absolute()
  if run.launcher == "local":
    local.run(todo, parallel=run.parallel,
              on_exit=lambda d, code: log(f"{'done' if code == 0 else 'FAILED'} {d.name}"))
  elif run.launcher == "slurm":
    from motif_jax.launch import slurm
    options = engine_options or slurm.SlurmOptions(parallel=run.parallel)
    jobs = slurm.submit(todo, folder=workdir / "slurm", options=options)
    log(f"submitted Slurm job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks); "
        "run this command again to collect results")
  else:
    from motif_jax.launch import skypilot
    skypilot.submit(todo, engine_options or skypilot.SkyOptions())
    log("launched on SkyPilot; run this command again to collect results")
