"""The SkyPilot launcher: one task YAML per sweep point (`num_nodes` hosts, one process each,
jax.distributed variables from SkyPilot's node variables), submitted with `sky launch` when
SkyPilot is installed (the `skypilot` extra).

The sweep workdir must be reachable at the same path from the cluster (a shared file system or a
bucket in `file_mounts`); SkyPilot syncs the repository (`workdir`) and runs there.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import yaml

from motif_jax.launch import distributed, points

TASK_FILE = "sky_task.yaml"
COORDINATOR_PORT = 8476


@dataclasses.dataclass(frozen=True)
class SkyOptions:
  nodes: int = 1  # hosts per point
  accelerators: str = "H100:8"  # per host; "" = CPU only
  setup: str = 'pip install -e ".[gpu]"'
  repo: str = "."  # synced to the cluster as SkyPilot's workdir
  use_spot: bool = False
  name: str = "motif-sweep"

  def __post_init__(self):
    if self.nodes < 1:
      raise ValueError(f"skypilot nodes={self.nodes} must be >= 1")


def task_spec(point_dir: Path, options: SkyOptions) -> dict:
  """The SkyPilot task for one point (a dict in the task-YAML schema)."""
  run = [f"export {distributed.ENV_COORDINATOR}="
         f"$(echo \"$SKYPILOT_NODE_IPS\" | head -n1):{COORDINATOR_PORT}",
         f"export {distributed.ENV_NUM_PROCESSES}=$SKYPILOT_NUM_NODES",
         f"export {distributed.ENV_PROCESS_ID}=$SKYPILOT_NODE_RANK"] if options.nodes > 1 else []
  run.append(f"python -m motif_jax.launch.points {shlex.quote(str(point_dir))}")
  resources = {"use_spot": options.use_spot}
  if options.accelerators:
    resources["accelerators"] = options.accelerators
  return {"name": f"{options.name}-{point_dir.name.rsplit(',', 1)[-1]}",
          "num_nodes": options.nodes, "resources": resources, "workdir": options.repo,
          "setup": options.setup, "run": "\n".join(run) + "\n"}


class _Dumper(yaml.SafeDumper):
  """Multi-line strings (the run script) as YAML literal blocks, as people write them."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def write_tasks(point_dirs: Sequence[Path], options: SkyOptions) -> list[Path]:
  paths = []
  for point_dir in point_dirs:
    path = Path(point_dir) / TASK_FILE
    path.write_text(yaml.dump(task_spec(Path(point_dir), options), Dumper=_Dumper,
                              sort_keys=False))
    paths.append(path)
  return paths


def submit(point_dirs: Sequence[Path], options: SkyOptions) -> list[Path]:
  """Write each point's YAML and `sky launch` it (detached, torn down after the run)."""
  paths = write_tasks(point_dirs, options)
  if shutil.which("sky") is None:
    raise RuntimeError("`sky` not found: pip install -e \".[skypilot]\"; the task files are "
                       f"written: {[str(p) for p in paths]}")
  for point_dir, path in zip(point_dirs, paths):
    cluster = task_spec(Path(point_dir), options)["name"]
    subprocess.run(["sky", "launch", "--yes", "--detach-run", "--down", "--cluster", cluster,
                    str(path)], check=True)
    points.write_json(Path(point_dir) / points.STATUS_FILE,
                      {"status": points.SUBMITTED, "launcher": "skypilot", "cluster": cluster})
  return paths
