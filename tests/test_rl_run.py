"""The RL loop end to end (experiments.rl, motif_jax.rl.trainer): a smoke run's metrics,
checkpoints and final params; resume in a fresh process equals the uninterrupted run (params,
replay buffer, pass-rate statistics, queue, RNG position); config errors; the prompt queue.

Rewards here are a `parity` verifier (1 when the completion's character codes sum to an odd
number): the 2-step SFT smoke model solves nothing, so the real verifiers would give all-zero,
degenerate groups; parity gives mixed groups, nonzero advantages and real updates.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from configs import rl as rl_config
from configs import sft as sft_config
from motif_jax import checkpoint, loop, trainer
from motif_jax.rl import prompts
from motif_jax.rl import trainer as rl_trainer

ROOT = Path(__file__).resolve().parents[1]
# The test process's XLA flags (tests/conftest.py): another device count splits CPU work
# differently and can move results by an ulp.
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0 "
           "--xla_force_host_platform_device_count=8")
PARITY = textwrap.dedent("""
    from motif_jax.rl import rewards as _rewards
    def parity_reward(text, record, context=_rewards.Context()):
      return _rewards.Reward(float(sum(map(ord, text)) % 2), {})
    _rewards.register("parity", parity_reward, verifier=True)
""")
exec(PARITY)  # noqa: S102 (the same reward in this process and in the subprocess)
STEPS = 2
METRIC_KEYS = ("rl/reward", "rl/pass_rate", "adv/mean", "adv/std", "clip/low", "clip/high",
               "kl/old", "kl/ref", "entropy", "is/mean", "is/max", "is/capped", "ratio/mean",
               "ratio/max", "rl/response_length", "rl/truncation", "domain/arith/reward",
               "domain/lists/pass_rate", "filter/dropped_groups", "filter/pass_rate",
               "replay/replayed", "replay/dropped_stale", "band/active_prompts",
               "balance/arith/weight", "perf/sample_s", "perf/score_s", "perf/update_s",
               "loss/rl", "grad/norm", "train/tokens")


def _overrides(init_from: str, num_steps: int) -> list[str]:
  """The test config as command-line flags (rl_smoke_config applies the same). No warmup and
  a constant LR (configs/rl.py: final_lr_ratio=1), so a shorter run follows the same LR."""
  return ["--config=configs/rl.py:smoke", f"--config.rl.init_from={init_from}",
          f"--config.train.num_steps={num_steps}", "--config.optim.warmup_steps=0",
          "--config.optim.learning_rate=0.01",
          "--config.rl.kl_coef=0.01", "--config.rl.max_staleness=1",
          "--config.rewards.terms.arith=parity", "--config.rewards.terms.lists=parity",
          "--config.train.eval_problems=0"]


def rl_smoke_config(init_from: str, num_steps: int, **train):
  config = rl_config.get_config("smoke")
  for flag in _overrides(init_from, num_steps)[1:]:
    path, value = flag.removeprefix("--config.").split("=", 1)
    section, *rest = path.split(".")
    target = config[section]
    for name in rest[:-1]:
      target = target[name]
    target[rest[-1]] = type(target[rest[-1]])(value)
  config.train.update(train)
  # optim.decay_steps follows train.num_steps (a shared reference): fix it at STEPS as the
  # command line of the STEPS-long runs does, so every run shares one schedule and one compile.
  config.optim = ml_collections.ConfigDict(config.optim.to_dict())
  config.optim.decay_steps = STEPS
  return config


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("sft")
  config = sft_config.get_config("smoke")
  config.train.update(dict(num_steps=2, eval_problems=0))
  trainer.train(config, str(workdir), log=lambda _: None)
  return workdir


@pytest.fixture(scope="module")
def straight(sft_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("rl_straight")
  config = rl_smoke_config(str(sft_dir), STEPS, eval_problems=1)
  summary = rl_trainer.train(config, str(workdir), log=lambda _: None)
  return workdir, summary


def _metrics(workdir) -> dict[int, dict]:
  lines = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {d["step"]: {k: v for k, v in d.items() if not k.startswith("perf/")}
          for d in lines if "rl/reward" in d}


def _host(workdir, step: int) -> dict:
  ckpt = checkpoint.TrainCheckpointer(Path(workdir) / "checkpoints", keep=3)
  try:
    return ckpt.restore_host(step)
  finally:
    ckpt.close()


def _params(workdir):
  return checkpoint.restore_params(Path(workdir) / loop.FINAL_PARAMS)[1]


def test_smoke_run_writes_metrics_checkpoints_and_final_params(straight, sft_dir):
  workdir, summary = straight
  assert summary["step"] == STEPS and summary["start_step"] == 0
  assert set(summary) >= {"step", "train", "eval", "seconds", "tokens_per_s", "params", "rl"}
  lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  steps = [d for d in lines if "rl/reward" in d]
  assert [d["step"] for d in steps] == list(range(1, STEPS + 1))
  for d in steps:
    assert set(METRIC_KEYS) <= set(d), set(METRIC_KEYS) - set(d)
  # Parity rewards: mixed groups, so the updates had a signal; replay joined at step 2 (half
  # of the 8 trajectories: rl.replay_fraction=0.5).
  assert all(d["adv/std"] > 0 for d in steps)
  assert [d["replay/replayed"] for d in steps] == [0, 4]
  assert [d["replay/fresh"] for d in steps] == [8, 4]
  # The SFT eval's key names (per domain and difficulty), written at the end.
  assert {"eval/accuracy", "eval/loss", "eval/accuracy/arith/d2"} <= set(summary["eval"])
  assert (workdir / "tensorboard").is_dir() and (workdir / "config.json").exists()
  ckpt = checkpoint.TrainCheckpointer(workdir / "checkpoints", keep=3)
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()
  host = _host(workdir, STEPS)
  assert host["rollout"] == STEPS and host["replay"]["meta"]["count"] > 0
  assert sum(host["pass_rates"]["samples"]) > 0
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(_params(workdir)), jax.tree.leaves(_params(sft_dir))))
  assert moved > 1e-4  # the RL steps changed the SFT params


def _assert_same_run(workdir, straight_dir):
  """Per-step metrics, final params and the host state at the last step (replay buffer,
  pass-rate statistics, filter counts, queue position, sampler-call count) equal bit for bit."""
  assert _metrics(workdir) == _metrics(straight_dir)
  assert _host(workdir, STEPS) == _host(straight_dir, STEPS)
  for a, b in zip(jax.tree.leaves(_params(straight_dir)), jax.tree.leaves(_params(workdir))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_from_the_checkpoint_is_exact(straight, sft_dir, tmp_path):
  """STEPS/2 rollout batches, then a second `train` call restores the train state and the host
  state from the checkpoint and finishes: the same run as the uninterrupted one."""
  straight_dir, _ = straight
  workdir = tmp_path / "split"
  rl_trainer.train(rl_smoke_config(str(sft_dir), STEPS // 2), str(workdir), log=lambda _: None)
  logs = []
  summary = rl_trainer.train(rl_smoke_config(str(sft_dir), STEPS), str(workdir), log=logs.append)
  assert summary["start_step"] == STEPS // 2
  assert any(f"resumed from step {STEPS // 2}" in line for line in logs)
  _assert_same_run(workdir, straight_dir)


def test_sft_term_reads_sft_rows_and_resumes_its_data_position_exactly(sft_dir, tmp_path):
  """rl.sft_coef > 0: every update also trains on train.sft_rows packed SFT rows (loss/sft
  logged, SFT tokens counted), and a resumed run continues the SFT data where it stopped (the
  Grain iterator is in the checkpoint): N batches straight == N/2 + N/2."""
  ptx = dict(sft_rows=2)

  def config(steps):
    c = rl_smoke_config(str(sft_dir), steps, **ptx)
    c.rl.sft_coef = 0.5
    return c
  straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
  rl_trainer.train(config(STEPS), str(straight_dir), log=lambda _: None)
  rl_trainer.train(config(STEPS // 2), str(split_dir), log=lambda _: None)
  rl_trainer.train(config(STEPS), str(split_dir), log=lambda _: None)
  metrics = _metrics(straight_dir)
  assert all(m["loss/sft"] > 0 and m["train/sft_tokens"] > 0 for m in metrics.values())
  assert _metrics(split_dir) == metrics
  a, b = _params(straight_dir), _params(split_dir)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_resume_in_a_fresh_process_after_a_crash_during_save_is_exact(straight, sft_dir,
                                                                      tmp_path):
  """STEPS/2 batches here; a process that resumes, runs the rest and is killed while committing
  the last checkpoint; then a fresh `python -m experiments.rl` resumes from STEPS/2 and
  finishes: the same run as the uninterrupted one."""
  straight_dir, _ = straight
  workdir = tmp_path / "split"
  rl_trainer.train(rl_smoke_config(str(sft_dir), STEPS // 2), str(workdir), log=lambda _: None)
  argv = [*_overrides(str(sft_dir), STEPS), f"--workdir={workdir}"]
  crash = PARITY + textwrap.dedent(f"""
      import os, signal, sys
      from orbax.checkpoint._src.path import async_path
      async def killed_rename(src, dst):
        os.kill(os.getpid(), signal.SIGKILL)  # die with the last step's files written, uncommitted
      async_path.rename = killed_rename
      sys.argv = ["rl", *{argv!r}]
      from absl import app
      from experiments import rl
      app.run(rl.main)
  """)
  killed = subprocess.run([sys.executable, "-c", crash], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
  assert killed.returncode == -9, killed.stderr[-3000:]
  ckpt = checkpoint.TrainCheckpointer(workdir / "checkpoints", keep=3)
  assert ckpt.latest_step() == STEPS // 2
  ckpt.close()
  script = PARITY + textwrap.dedent(f"""
      import sys
      sys.argv = ["rl", *{argv!r}]
      from absl import app
      from experiments import rl
      app.run(rl.main)
  """)
  resumed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from step {STEPS // 2}" in resumed.stdout + resumed.stderr
  _assert_same_run(workdir, straight_dir)


@pytest.mark.parametrize("overrides, message", [
    ({"rl.eps_low": 1.5}, r"rl\.eps_low=1\.5 must be < 1"),
    ({"train.rows": 7, "train.num_microbatches": 2},
     r"train\.rows=7 must be a multiple of train\.num_microbatches=2"),
    ({"rl.sft_coef": 0.5}, r"rl\.sft_coef=0\.5 needs train\.sft_rows >= 1"),
    ({"train.sft_rows": 2}, r"train\.sft_rows=2 is unused while rl\.sft_coef=0"),
])
def test_config_errors_name_the_field(tmp_path, overrides, message):
  config = rl_config.get_config("smoke")
  for path, value in overrides.items():
    section, name = path.split(".")
    config[section][name] = value
  with pytest.raises(ValueError, match=message):
    rl_trainer.train(config, str(tmp_path / "run"))


def test_a_missing_init_dir_is_refused_before_writing_and_ablation_overrides_are_valid(tmp_path):
  config = rl_config.get_config("smoke")
  config.rl.init_from = str(tmp_path / "missing")
  with pytest.raises(ValueError, match=r"rl\.init_from=.*missing does not exist"):
    rl_trainer.train(config, str(tmp_path / "c"))
  assert not (tmp_path / "c").exists()  # nothing written before the config is valid
  # The reproduce report's ablations: band off, replay off, symmetric clip.
  config = rl_config.get_config("smoke")
  config.rl.update(dict(pass_rate_low=0.0, pass_rate_high=1.0, online_filter=False,
                        replay_fraction=0.0, eps_high=0.2, eps_low=0.2))
  run = rl_trainer.RLRunConfig.from_config_dict(config)
  assert run.rl.replay_fraction == 0 and run.rl.eps_high == run.rl.eps_low


def test_experiments_rl_reports_a_missing_init_dir_in_one_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "experiments.rl", "--config=configs/rl.py:smoke",
                        f"--config.rl.init_from={tmp_path / 'nope'}",
                        f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
      f"error: rl.init_from={tmp_path / 'nope'} does not exist")


def test_prompt_queue_draws_inside_the_band_per_domain_and_round_trips():
  domain_p = np.array([0, 1, 0, 1, 0, 1, 0, 0])  # domain 0: prompts 0 2 4 6 7; domain 1: 1 3 5
  queue = prompts.PromptQueue.create(domain_p, 2, seed=3)
  active = np.ones(8, bool)
  first = queue.draw([5, 3], active)  # a whole epoch of each domain
  assert sorted(first[:5]) == [0, 2, 4, 6, 7] and sorted(first[5:]) == [1, 3, 5]
  active[[0, 2, 4]] = False  # retired: the queue skips them while another prompt is active
  drawn = queue.draw([4, 0], active)
  assert set(drawn) <= {6, 7} and queue.band_ignored == 0
  saved = json.loads(json.dumps(queue.state_dict()))
  again = prompts.PromptQueue.create(domain_p, 2, seed=3)
  again.load_state_dict(saved)
  assert again.draw([3, 2], active) == queue.draw([3, 2], active)
  active[:] = False  # nothing inside the band: draws go on, counted as band_ignored
  assert len(queue.draw([2, 1], active)) == 3 and queue.band_ignored == 3
