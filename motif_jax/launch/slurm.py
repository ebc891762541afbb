"""The Slurm launcher: a job array through submitit, one array task per sweep point, one Slurm
task per host (`nodes` hosts per point), each running `motif_jax.launch.points` with the
jax.distributed variables set from submitit's job environment.

    jobs = slurm.submit(point_dirs, folder=workdir / "slurm", options=SlurmOptions(nodes=2))

Needs the `slurm` extra (`pip install -e ".[slurm]"`, i.e. submitit). Tested without a cluster:
the generated sbatch script is checked and the task function runs under submitit's local
executor.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

from motif_jax.launch import distributed, points


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  nodes: int = 1  # hosts per point; one process (Slurm task) per host
  gpus_per_node: int = 0  # 0 = no GPU request
  cpus_per_task: int = 0  # 0 = Slurm's default
  partition: str = ""  # "" = the cluster's default
  timeout_min: int = 60
  parallel: int = 8  # array tasks running at once (%N)
  name: str = "motif-sweep"

  def __post_init__(self):
    for name in ("nodes", "timeout_min", "parallel"):
      if getattr(self, name) < 1:
        raise ValueError(f"slurm {name}={getattr(self, name)} must be >= 1")


def coordinator_env(hostnames: Sequence[str], job_id: str, num_tasks: int,
                    global_rank: int) -> dict[str, str]:
  """jax.distributed variables for one task; empty for a single-task point."""
  if num_tasks == 1:
    return {}
  port = 61440 + zlib.crc32(job_id.encode()) % 4096  # the same on every task of the job
  return {distributed.ENV_COORDINATOR: f"{hostnames[0]}:{port}",
          distributed.ENV_NUM_PROCESSES: str(num_tasks),
          distributed.ENV_PROCESS_ID: str(global_rank)}


def run_task(point_dir: str) -> int:
  """What every Slurm task of a point runs (submitit pickles a reference to it)."""
  import submitit
  job = submitit.JobEnvironment()
  os.environ.update(coordinator_env(job.hostnames, job.job_id, job.num_tasks, job.global_rank))
  code = points.run_point(Path(point_dir))
  if code:
    raise RuntimeError(f"{point_dir} failed with exit code {code}:\n"
                       f"{points.log_tail(Path(point_dir))}")
  return code


def make_executor(folder: Path, options: SlurmOptions, *, cluster: str = "slurm"):
  """submitit's AutoExecutor for `options`; `cluster="local"` or "debug" runs tasks here."""
  import submitit
  executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
  params = dict(name=options.name, nodes=options.nodes, tasks_per_node=1,
                timeout_min=options.timeout_min)
  if options.gpus_per_node:
    params["gpus_per_node"] = options.gpus_per_node
  if options.cpus_per_task:
    params["cpus_per_task"] = options.cpus_per_task
  if cluster == "slurm":
    params["slurm_array_parallelism"] = options.parallel
    if options.partition:
      params["slurm_partition"] = options.partition
  executor.update_parameters(**params)
  return executor


def submit(point_dirs: Sequence[Path], *, folder: Path, options: SlurmOptions,
           cluster: str = "slurm") -> list:
  """One job array for all points; marks each point `submitted` with its job id."""
  executor = make_executor(folder, options, cluster=cluster)
  jobs = executor.map_array(run_task, [str(d) for d in point_dirs])
  for point_dir, job in zip(point_dirs, jobs):
    points.write_json(Path(point_dir) / points.STATUS_FILE,
                      {"status": points.SUBMITTED, "launcher": "slurm", "job_id": job.job_id})
  return jobs
