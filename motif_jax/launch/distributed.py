"""Multi-host start-up: every `experiments/*.py` entry point calls `initialize()` first.

One process per host (per GPU node) runs the same command. `jax.distributed` joins them when the
run is given a coordinator, in this order of precedence:

1. flags, named as `jax.distributed.initialize` names them:
   `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`;
2. the environment: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`
   (what the Slurm and SkyPilot launchers in this package set);
3. a Slurm step with more than one task (`srun`), which `jax.distributed.initialize()` detects
   by itself (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID).

With none of these the run stays single-process and nothing is initialized. CPU collectives go
through gloo, so several CPU processes (tests, laptops) form one mesh as GPU hosts do.
"""

from __future__ import annotations

import dataclasses
import os

from absl import flags

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 for jax.distributed (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Coordinates:
  """Where this process sits; `source` says what set it (flags | env | slurm | none)."""
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  source: str


def resolve(*, coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, environ=None) -> Coordinates:
  """The coordinates `initialize` uses: flags first, then the environment, then Slurm."""
  environ = os.environ if environ is None else environ
  if coordinator_address is not None:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id too")
    return Coordinates(coordinator_address, num_processes, process_id, "flags")
  if num_processes is not None or process_id is not None:
    raise ValueError("--num_processes/--process_id need --coordinator_address=HOST:PORT")
  if environ.get(ENV_COORDINATOR):
    missing = [k for k in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if not environ.get(k)]
    if missing:
      raise ValueError(f"{ENV_COORDINATOR} is set but {missing} are not")
    return Coordinates(environ[ENV_COORDINATOR], int(environ[ENV_NUM_PROCESSES]),
                       int(environ[ENV_PROCESS_ID]), "env")
  if all(k in environ for k in _SLURM_VARS) and int(environ["SLURM_NTASKS"]) > 1:
    return Coordinates(None, None, None, "slurm")  # jax.distributed detects the rest
  return Coordinates(None, None, None, "none")


def initialize() -> Coordinates:
  """Join the multi-host run this process was launched into (no-op for a single process).

  Call it before anything touches a device. Flags are read if they were parsed (absl app).
  """
  import jax  # here, not at the top: the launchers use this module's names without jax
  parsed = flags.FLAGS.is_parsed()
  coords = resolve(coordinator_address=_COORDINATOR.value if parsed else None,
                   num_processes=_NUM_PROCESSES.value if parsed else None,
                   process_id=_PROCESS_ID.value if parsed else None)
  if coords.source == "none" or jax.distributed.is_initialized():
    return coords
  # CPU processes exchange collectives through gloo (GPU collectives use NCCL regardless).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coords.coordinator_address, coords.num_processes, coords.process_id)
  return coords


def is_primary() -> bool:
  """Process 0 writes the files every process would otherwise write alike (reports, logs)."""
  import jax
  return jax.process_index() == 0
