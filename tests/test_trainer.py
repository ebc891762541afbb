"""The SFT trainer end to end: smoke run, resume exactness across processes, crash during a
checkpoint save, stage-2 initialization and config errors."""

import functools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import sft as sft_config
from motif_jax import checkpoint, optim, trainer
from motif_jax.data import pipeline
from motif_jax.sft import BATCH_KEYS, SFTConfig, sft_step
from motif_jax.train_state import init_train_state

ROOT = Path(__file__).resolve().parents[1]
# The same XLA flags as the test process (tests/conftest.py): with another fake-device count the
# CPU backend splits its intra-op work differently, and resumed params differed by 1 ulp.
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0 "
           "--xla_force_host_platform_device_count=8")


def smoke_config(num_steps=4, **train):
  config = sft_config.get_config("smoke")
  config.optim.decay_steps = 4  # fixed schedule, so shorter runs follow the same LR curve
  config.train.num_steps = num_steps
  config.train.update(train)
  return config


def _overrides(num_steps):
  return ["--config=configs/sft.py:smoke", "--config.optim.decay_steps=4",
          f"--config.train.num_steps={num_steps}"]


def _losses(workdir):
  lines = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {d["step"]: d["loss/ce"] for d in lines if "loss/ce" in d}


def _params(workdir):
  return checkpoint.restore_params(Path(workdir) / trainer.FINAL_PARAMS)[1]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  summary = trainer.train(smoke_config(4), str(workdir), log=lambda _: None)
  return workdir, summary


def test_smoke_run_writes_checkpoints_metrics_and_final_params(straight_run):
  workdir, summary = straight_run
  assert summary["step"] == 4 and summary["start_step"] == 0
  assert checkpoint.TrainCheckpointer(workdir / "checkpoints", keep=3).all_steps() == [2, 4]
  assert sorted(_losses(workdir)) == [1, 2, 3, 4]
  assert (workdir / "tensorboard").is_dir() and (workdir / "config.json").exists()
  assert "eval/loss" in summary["eval"] and "eval/accuracy" in summary["eval"]
  assert np.isfinite(summary["eval"]["eval/loss"])


def test_resume_in_a_fresh_process_after_a_crash_during_save_is_exact(straight_run, tmp_path):
  """2 steps; a process that resumes, runs steps 3-4 and is killed while committing the step-4
  checkpoint; then a fresh process resumes from step 2 and finishes: the same losses per step
  and bit-identical params as 4 uninterrupted steps."""
  straight_dir, _ = straight_run
  workdir = tmp_path / "split"
  trainer.train(smoke_config(2), str(workdir), log=lambda _: None)
  crash = textwrap.dedent(f"""
      import os, signal, sys
      from orbax.checkpoint._src.path import async_path
      async def killed_rename(src, dst):
        os.kill(os.getpid(), signal.SIGKILL)  # die with the step-4 files written, uncommitted
      async_path.rename = killed_rename
      sys.argv = ["sft", *{_overrides(4)!r}, "--workdir={workdir}"]
      from absl import app
      from experiments import sft
      app.run(sft.main)
  """)
  killed = subprocess.run([sys.executable, "-c", crash], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
  assert killed.returncode == -9, killed.stderr[-2000:]
  assert checkpoint.TrainCheckpointer(workdir / "checkpoints", keep=3).latest_step() == 2
  resumed = subprocess.run([sys.executable, "-m", "experiments.sft", *_overrides(4),
                            f"--workdir={workdir}"], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from step 2" in resumed.stdout + resumed.stderr
  straight, split = _losses(straight_dir), _losses(workdir)
  assert [split[s] for s in (1, 2, 3, 4)] == [straight[s] for s in (1, 2, 3, 4)]
  for a, b in zip(jax.tree.leaves(_params(straight_dir)), jax.tree.leaves(_params(workdir))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stage2_starts_from_stage1_params_with_a_fresh_optimizer(straight_run, tmp_path):
  """One AdamW step at a nonzero learning rate from stage 1's final params equals the same step
  computed here from a fresh optimizer state on the run's first batch. Stage 1's Adam moments
  carried over (or its params not loaded) would give other params."""
  straight_dir, _ = straight_run
  config = smoke_config(1, init_from=str(straight_dir))
  config.optim.update(dict(warmup_steps=0, learning_rate=1e-3))
  summary = trainer.train(config, str(tmp_path / "stage2"), log=lambda _: None)
  assert summary["start_step"] == 0 and summary["train"]["train/lr"] == pytest.approx(1e-3)

  run = trainer.RunConfig.from_config_dict(config)
  optimizer, schedule = optim.make_optimizer(run.optim)
  ds, _ = pipeline.sft_dataset(run.data, process_index=0, process_count=1)
  it = iter(ds)
  first = {k: jnp.asarray(v) for k, v in next(it).items() if k in BATCH_KEYS}
  it.close()
  fresh = init_train_state(_params(straight_dir), optimizer)
  expected, _ = jax.jit(functools.partial(
      sft_step, cfg=SFTConfig(run.model, run.train.num_microbatches, run.train.loss_impl,
                              run.train.z_loss), optimizer=optimizer, schedule=schedule))(
                                  fresh, first)
  moved = 0.0
  for a, b, c in zip(jax.tree.leaves(expected.params), jax.tree.leaves(summary["params"]),
                     jax.tree.leaves(_params(straight_dir))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
    moved = max(moved, float(np.abs(np.asarray(b) - np.asarray(c)).max()))
  assert moved > 5e-4  # the step did move the params (by about lr)


def test_config_errors_name_the_field(tmp_path):
  config = smoke_config(2)
  config.train.num_microbatches = 3
  with pytest.raises(ValueError, match=r"train\.batch_size=4 must be a multiple of "
                                       r"train\.num_microbatches=3"):
    trainer.train(config, str(tmp_path / "a"))
  config = smoke_config(2)
  config.data = ml_collections.ConfigDict(config.data.to_dict())  # detach the shared reference
  config.data.global_batch_size = 8
  with pytest.raises(ValueError, match=r"data\.global_batch_size=8 must equal train\.batch_size=4"):
    trainer.train(config, str(tmp_path / "b"))
  config = smoke_config(2, init_from=str(tmp_path / "missing"))
  with pytest.raises(ValueError, match=r"train\.init_from=.*no params there"):
    trainer.train(config, str(tmp_path / "c"))


def test_resume_onto_a_different_mesh(straight_run, tmp_path):
  """Checkpoints saved on one device restore onto an (fsdp=2, tensor=2) mesh and training goes
  on; the losses follow the single-device run up to float32 reduction order."""
  straight_dir, _ = straight_run
  workdir = tmp_path / "remesh"
  trainer.train(smoke_config(2), str(workdir), log=lambda _: None)
  config = smoke_config(4)
  config.mesh.fsdp, config.mesh.tensor = 2, 2
  logs = []
  summary = trainer.train(config, str(workdir), log=logs.append)
  assert summary["start_step"] == 2 and summary["step"] == 4
  assert any("resumed from step 2" in line for line in logs)
  wq = summary["params"]["layers"]["attn"]["wq"]
  assert len(wq.sharding.device_set) == 4
  straight, resumed = _losses(straight_dir), _losses(workdir)
  np.testing.assert_allclose([resumed[3], resumed[4]], [straight[3], straight[4]], rtol=1e-4)


def test_training_stops_after_too_many_non_finite_steps(straight_run, tmp_path):
  straight_dir, _ = straight_run
  cfg, params = checkpoint.restore_params(Path(straight_dir) / trainer.FINAL_PARAMS)
  params["final_norm"] = params["final_norm"].at[0].set(np.nan)  # every step is non-finite
  checkpoint.save_params(tmp_path / "poisoned", cfg, params)
  config = smoke_config(4, init_from=str(tmp_path / "poisoned"), max_bad_steps=2)
  with pytest.raises(RuntimeError, match=r"2 consecutive steps had non-finite .*max_bad_steps=2"):
    trainer.train(config, str(tmp_path / "run"), log=lambda _: None)
