"""Sweeps: expansion (grid, seeded random, derived fields), deterministic names, the local
launcher (resume, locks, failures, results), and the Slurm / SkyPilot job specs validated with
submitit and SkyPilot's own schema, without a cluster.

The launcher tests run a fake experiment (a few lines that write metrics.jsonl, or fail when the
learning rate is too high) so they take seconds; `experiments.sft` itself is launched the same
way (tests/test_multihost.py runs it under jax.distributed).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from motif_jax.launch import distributed, driver, points, results, skypilot, slurm, sweep

ROOT = Path(__file__).resolve().parents[1]

BASE_CONFIG = """
import ml_collections

def get_config(arg=None):
  steps = ml_collections.FieldReference(100)
  batch = ml_collections.FieldReference(4)
  return ml_collections.ConfigDict(dict(
      optim=dict(learning_rate=1e-3, warmup_steps=0, decay_steps=steps),
      train=dict(num_steps=steps, batch_size=batch),
      data=dict(global_batch_size=batch)))
"""

# Loss falls like lr * 100 / step; a learning rate above 0.5 "diverges" (exit code 3).
FAKE_EXPERIMENT = """
import json, pathlib, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
lr = float(args["config.optim.learning_rate"])
workdir = pathlib.Path(args["workdir"])
with open(workdir / "runs.txt", "a") as f:
  f.write("run\\n")
if lr > 0.5:
  print("loss is nan at step 2: diverged")
  sys.exit(3)
with open(workdir / "metrics.jsonl", "a") as f:
  for step in (1, 2, 4):
    f.write(json.dumps({"step": step, "loss/ce": lr * 100 / step,
                        "warmup": int(args["config.optim.warmup_steps"])}) + "\\n")
"""

SWEEP_FILE = """
from motif_jax.launch import sweep

def get_sweep():
  return sweep.Sweep(points=sweep.grid({"optim.learning_rate": [0.01, 0.9, 0.03]}),
                     derived={"optim.warmup_steps": lambda c: c.train.num_steps // 10},
                     metric="loss/ce", goal="min", report=("warmup",))
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
  """A base config, a sweep file and the fake experiment module importable by subprocesses."""
  (tmp_path / "base.py").write_text(BASE_CONFIG)
  (tmp_path / "lr_sweep.py").write_text(SWEEP_FILE)
  (tmp_path / "fake").mkdir()
  (tmp_path / "fake" / "__init__.py").write_text("")
  (tmp_path / "fake" / "experiment.py").write_text(FAKE_EXPERIMENT)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
  return tmp_path


def _run(project, workdir, **kw):
  run = driver.SweepRun(sweep_file=str(project / "lr_sweep.py"), base=str(project / "base.py"),
                        workdir=str(workdir), experiment="fake.experiment", **kw)
  lines = []
  return driver.run_sweep(run, log=lines.append), "\n".join(lines)


# ---- expansion and names -----------------------------------------------------------------------

def test_grid_is_every_combination_first_axis_slowest():
  assert sweep.grid({"a.x": [1, 2], "b.y": ["u", "v", "w"]}) == [
      {"a.x": 1, "b.y": "u"}, {"a.x": 1, "b.y": "v"}, {"a.x": 1, "b.y": "w"},
      {"a.x": 2, "b.y": "u"}, {"a.x": 2, "b.y": "v"}, {"a.x": 2, "b.y": "w"}]
  with pytest.raises(ValueError, match="a.x"):
    sweep.grid({"a.x": []})


def test_random_sweep_is_seeded_and_stays_in_its_ranges():
  space = {"optim.learning_rate": sweep.LogUniform(1e-4, 1e-2), "train.batch_size": [8, 16],
           "optim.b2": sweep.Uniform(0.9, 0.99)}
  first = sweep.random(space, num=20, seed=3)
  assert first == sweep.random(space, num=20, seed=3)
  assert first != sweep.random(space, num=20, seed=4)
  for point in first:
    assert 1e-4 <= point["optim.learning_rate"] <= 1e-2
    assert point["train.batch_size"] in (8, 16) and type(point["train.batch_size"]) is int
    assert 0.9 <= point["optim.b2"] <= 0.99
    # 3 significant digits, so names and tables print the value exactly
    assert float(f"{point['optim.learning_rate']:.3g}") == point["optim.learning_rate"]
  # a log-uniform draw covers the decades evenly: about half the points fall below 1e-3
  assert 5 <= sum(p["optim.learning_rate"] < 1e-3 for p in first) <= 15
  assert {p["train.batch_size"] for p in first} == {8, 16}


def test_derived_fields_are_computed_from_each_resolved_point(project):
  s = sweep.Sweep(points=[{"train.num_steps": 50}, {"train.num_steps": 300}, {}],
                  derived={"optim.warmup_steps": lambda c: c.train.num_steps // 10})
  points_ = sweep.expand(s, str(project / "base.py"))
  assert [p.derived for p in points_] == [{"optim.warmup_steps": 5}, {"optim.warmup_steps": 30},
                                          {"optim.warmup_steps": 10}]  # base: 100 steps
  assert [p.config.optim.warmup_steps for p in points_] == [5, 30, 10]
  assert points_[1].config.optim.decay_steps == 300  # FieldReference follows num_steps
  with pytest.raises(ValueError, match="both swept and derived"):
    sweep.Sweep(points=[{"optim.warmup_steps": 1}],
                derived={"optim.warmup_steps": lambda c: 2})
  with pytest.raises(ValueError, match="'optim.nope'"):
    sweep.expand(sweep.Sweep(points=[{"optim.nope": 1}]), str(project / "base.py"))


def test_the_shipped_sft_sweep_moves_the_shared_batch_size():
  s = sweep.load_sweep(ROOT / "configs/sweeps/sft_lr_batch.py")
  expanded = sweep.expand(s, str(ROOT / "configs/sft.py") + ":quickstart,steps=40")
  assert len(expanded) == 6 and s.swept_fields == ["optim.learning_rate", "train.batch_size"]
  for point in expanded:
    assert point.config.data.global_batch_size == point.overrides["train.batch_size"]
    assert point.derived == {"optim.warmup_steps": 4}


def test_the_shipped_rl_sweep_pairs_band_bounds_with_clip_higher():
  s = sweep.load_sweep(ROOT / "configs/sweeps/rl_band_clip.py")
  expanded = sweep.expand(s, str(ROOT / "configs/rl.py") + ":smoke")
  assert len(expanded) == 9 and s.goal == "max"
  bands = {(p.config.rl.pass_rate_low, p.config.rl.pass_rate_high) for p in expanded}
  assert bands == {(0.0, 1.0), (0.1, 0.9), (0.2, 0.8)}
  for point in expanded:  # every band is a proper interval; clip-higher never below eps_low
    assert point.config.rl.pass_rate_low < point.config.rl.pass_rate_high
    assert point.config.rl.eps_high >= point.config.rl.eps_low
  assert sorted({p.config.rl.eps_high for p in expanded}) == [0.2, 0.28, 0.35]


def test_point_names_are_deterministic_readable_and_unique():
  name = sweep.point_name({"train.batch_size": 8, "optim.learning_rate": 0.003})
  # Golden: a sweep resumes by these names, so changing the scheme orphans existing workdirs.
  assert name == sweep.point_name({"optim.learning_rate": 0.003, "train.batch_size": 8})
  assert name.startswith("learning_rate=0.003,batch_size=8,") and len(name.split(",")[-1]) == 8
  # same last parts, different fields: the hash tells them apart
  assert sweep.point_name({"a.lr": 1}) != sweep.point_name({"b.lr": 1})
  assert sweep.point_name({"a.lr": 1}) != sweep.point_name({"a.lr": 1.0})
  with pytest.raises(ValueError, match="repeats a point"):
    sweep.expand(sweep.Sweep(points=[{}, {}]), str(ROOT / "configs/sft.py:smoke"))


# ---- the local launcher --------------------------------------------------------------------------

def test_sweep_runs_points_reports_a_failure_and_resumes(project, tmp_path):
  workdir = tmp_path / "sweep"
  rows, log = _run(project, workdir, parallel=2)
  by_lr = {r["optim.learning_rate"]: r for r in rows}
  assert {lr: r["status"] for lr, r in by_lr.items()} == {0.01: "done", 0.9: "failed",
                                                          0.03: "done"}
  assert by_lr[0.03]["final/loss/ce"] == pytest.approx(0.03 * 100 / 4)
  assert by_lr[0.03]["best/loss/ce"] == pytest.approx(0.03 * 100 / 4)  # min over steps 1, 2, 4
  assert by_lr[0.01]["final/warmup"] == 10  # derived: 100 steps // 10
  assert "diverged" in log and "FAILED" in log  # the failing point's log tail is reported
  failed_dir = workdir / by_lr[0.9]["point"]
  assert json.loads((failed_dir / "status.json").read_text())["returncode"] == 3
  assert json.loads((failed_dir / "config.json").read_text())["optim"]["warmup_steps"] == 10

  csv_lines = (workdir / "results.csv").read_text().splitlines()
  assert len(csv_lines) == 4 and "best/loss/ce" in csv_lines[0]
  assert f"at `{by_lr[0.01]['point']}`" in (workdir / "results.md").read_text()
  assert (workdir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

  rows2, log2 = _run(project, workdir, parallel=2)  # resume: only the failed point runs again
  runs = {r["optim.learning_rate"]: (workdir / r["point"] / "runs.txt").read_text().count("run")
          for r in rows2}
  assert runs == {0.01: 1, 0.9: 2, 0.03: 1}
  assert log2.count("skip ") == 2


def test_a_running_point_is_not_started_twice_and_stale_locks_are_broken(project, tmp_path):
  workdir = tmp_path / "sweep"
  run = driver.SweepRun(sweep_file=str(project / "lr_sweep.py"), base=str(project / "base.py"),
                        workdir=str(workdir), experiment="fake.experiment")
  _, dirs = driver.prepare(run)
  live, dead, remote = dirs
  points.write_json(live / points.LOCK_FILE, {"pid": os.getpid(), "host": socket.gethostname()})
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  points.write_json(dead / points.LOCK_FILE, {"pid": gone.pid, "host": socket.gethostname()})
  points.write_json(remote / points.LOCK_FILE, {"pid": 1, "host": "another-host"})
  assert [points.state(d) for d in dirs] == ["running", "pending", "running"]
  old = time.time() - points.STALE_S - 1  # a heartbeat older than STALE_S: its host is gone
  os.utime(remote / points.LOCK_FILE, (old, old))
  assert points.state(remote) == "pending"
  assert not points.acquire(live)
  (remote / points.LOCK_FILE).write_text("")  # a lock caught mid-write is held while fresh
  assert points.state(remote) == "running"
  os.utime(remote / points.LOCK_FILE, (old, old))
  rows, _ = _run(project, workdir)
  assert [r["status"] for r in rows] == ["running", "failed", "done"]  # 0.9 fails, as before
  assert not (live / "runs.txt").exists()


def test_the_cli_runs_a_sweep(project, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.sweep", f"--sweep={project / 'lr_sweep.py'}",
       f"--base={project / 'base.py'}", f"--workdir={tmp_path / 'cli'}",
       "--experiment=fake.experiment", "--parallel=3"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "'done': 2, 'failed': 1" in proc.stdout
  assert len((tmp_path / "cli" / "results.csv").read_text().splitlines()) == 4


# ---- cluster engines, validated without a cluster ----------------------------------------------

def test_slurm_job_array_script_from_submitit(project, tmp_path, monkeypatch):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text("#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/args\"\n"
                                  "echo 'Submitted batch job 4242'\n")
  (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks it exists
  for tool in ("sbatch", "srun"):
    (bin_dir / tool).chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  run = driver.SweepRun(sweep_file=str(project / "lr_sweep.py"), base=str(project / "base.py"),
                        workdir=str(tmp_path / "sweep"), experiment="fake.experiment")
  _, dirs = driver.prepare(run)
  options = slurm.SlurmOptions(nodes=2, gpus_per_node=8, parallel=2, partition="gpu",
                               timeout_min=90)
  jobs = slurm.submit(dirs, folder=tmp_path / "slurm", options=options)
  assert [j.job_id for j in jobs] == ["4242_0", "4242_1", "4242_2"]
  script = Path((bin_dir / "args").read_text().split()[-1]).read_text()
  for line in ("#SBATCH --array=0-2%2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
               "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu", "#SBATCH --time=90"):
    assert line in script.splitlines(), line
  assert "srun" in script and "submitit.core._submit" in script
  assert [points.state(d) for d in dirs] == ["submitted"] * 3
  assert driver.to_launch(dirs, resubmit=False) == []  # a rerun does not submit them again


def test_slurm_task_sets_jax_distributed_variables_and_runs_under_submitit(project, tmp_path):
  env = slurm.coordinator_env(["node7", "node8"], "4242_1", num_tasks=2, global_rank=1)
  resolved = distributed.resolve(environ=env)
  assert (resolved.source, resolved.num_processes, resolved.process_id) == ("env", 2, 1)
  assert resolved.coordinator_address.startswith("node7:")
  assert env == slurm.coordinator_env(["node7", "node8"], "4242_1", 2, 0) | {
      distributed.ENV_PROCESS_ID: "1"}  # every task of the job agrees on the coordinator
  assert slurm.coordinator_env(["node7"], "4242_1", 1, 0) == {}

  run = driver.SweepRun(sweep_file=str(project / "lr_sweep.py"), base=str(project / "base.py"),
                        workdir=str(tmp_path / "sweep"), experiment="fake.experiment")
  _, dirs = driver.prepare(run)
  jobs = slurm.submit(dirs[:1], folder=tmp_path / "local", options=slurm.SlurmOptions(),
                      cluster="local")  # submitit's LocalExecutor: a real task process
  assert jobs[0].result() == 0
  assert points.state(dirs[0]) == "done" and (dirs[0] / "metrics.jsonl").exists()


def test_skypilot_task_yaml_validates_against_skypilot_schema(project, tmp_path):
  run = driver.SweepRun(sweep_file=str(project / "lr_sweep.py"), base=str(project / "base.py"),
                        workdir=str(tmp_path / "sweep"), experiment="fake.experiment")
  _, dirs = driver.prepare(run)
  paths = skypilot.write_tasks(dirs, skypilot.SkyOptions(nodes=2, accelerators="H100:8"))
  # SkyPilot 0.14.1's own JSON schemas (sky.utils.schemas), stored: skypilot is too heavy a
  # dependency for the test environment. With skypilot installed, its parser runs as well.
  schemas = json.loads((ROOT / "tests/data/skypilot_schemas.json").read_text())
  names = set()
  for path, point_dir in zip(paths, dirs):
    task = yaml.safe_load(path.read_text())
    jsonschema.validate(task, schemas["task"])
    jsonschema.validate(task["resources"], schemas["resources"])
    assert task["num_nodes"] == 2 and task["resources"]["accelerators"] == "H100:8"
    run_lines = task["run"].splitlines()
    assert "export JAX_PROCESS_ID=$SKYPILOT_NODE_RANK" in run_lines
    assert run_lines[-1] == f"python -m motif_jax.launch.points {point_dir}"
    names.add(task["name"])
  assert len(names) == 3  # one cluster name per point
  with pytest.raises(jsonschema.ValidationError):  # the schema does reject a malformed task
    jsonschema.validate({"num_nodes": "two"}, schemas["task"])
  single = skypilot.task_spec(dirs[0], skypilot.SkyOptions(nodes=1))
  assert "JAX_" not in single["run"]  # one host: no coordinator
  try:
    import sky
  except ImportError:
    return
  assert sky.Task.from_yaml(str(paths[0])).num_nodes == 2


def test_metric_summary_skips_torn_lines_and_non_finite_values(tmp_path):
  (tmp_path / "m.jsonl").write_text('{"step": 1, "l": 3.0}\n{"step": 2, "l": NaN}\n'
                                    '{"step": 3, "l": 2.0}\n{"step": 4, "l": 2.5}\n{"step": 5, "l')
  out = results.metric_summary(tmp_path / "m.jsonl", ["l", "absent"], "min")
  assert (out["final/l"], out["best/l"]) == (2.5, 2.0)
  assert out["final/absent"] != out["final/absent"]  # NaN: never logged
  assert results.metric_summary(tmp_path / "m.jsonl", ["l"], "max")["best/l"] == 3.0


def test_results_of_an_unswept_run_still_write_a_plot(tmp_path):
  """A study's single point (nothing swept) gets its table and a per-point plot, no crash."""
  rows = [{"point": "only", "status": "done", "final/loss": 1.5, "best/loss": 1.2}]
  out = results.write_all(rows, tmp_path, fields=[], metric="loss", goal="min")
  assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
