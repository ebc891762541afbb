"""The RL trainer: rollouts, filtering, replay and `rl_step` plugged into the shared loop shell.

    summary = train(config, workdir)   # configs/rl.py; experiments/rl.py is the entry point

One loop step is one rollout batch:
  1. the balancer splits `train.prompts_per_batch` prompts over `rl.domains` (rl/balance.py),
     the queue draws them inside the pass-rate band (rl/prompts.py);
  2. the sampler draws `rl.group_size` completions per prompt with behaviour log-probs, the
     scorer rewards them (rl/rollout.py); every scored sample updates the per-prompt pass-rate
     statistics (rl/filtering.py); the online filter drops groups whose rewards are all equal
     and the queue refills, at most `train.max_refills` more sampler calls (then the dropped
     groups top the batch up, counted in rollout/forced_groups);
  3. group-relative advantages; the replay buffer mixes `rl.replay_fraction` replayed
     trajectories (at most `rl.max_staleness` policy versions old) with fresh ones;
  4. the trajectories are packed into `train.rows` x `train.seq_len` rows (any that do not fit
     are left out and counted in pack/dropped), with rl.sft_coef > 0 plus `train.sft_rows`
     packed SFT rows of data.inputs (the SFT trainer's pipeline; its Grain iterator is
     checkpointed with the train state), and `rl.updates_per_rollout` jitted `rl_step`s run on
     them (`rl_updates`; π_old recomputed or the behaviour log-probs; reference log-probs when
     rl.kl_coef > 0).

The policy version is the optimizer step count. Host state (queue position, pass-rate
statistics, online-filter counts, replay buffer, per-domain reward EMA, the sampler-call count
that positions the RNG stream) is one JSON item of the same Orbax checkpoint step as the train
state, so a resumed run continues bit-exactly on CPU. Sampler keys are
fold_in(key(state.rng), sampler calls so far).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from motif_jax import checkpoint, eval_run, evaluation, loop, typed_config
from motif_jax import sharding as shd
from motif_jax.data import curate, formats, pipeline
from motif_jax.data.config import DataConfig
from motif_jax.model import ModelConfig, validate_sharding
from motif_jax.optim import OptimConfig, make_optimizer
from motif_jax.rl import balance, filtering, prompts, rewards, rollout
from motif_jax.rl.config import RLConfig
from motif_jax.rl.packing import add_sft_rows, first_fit, pack_trajectories
from motif_jax.rl.replay import ReplayBuffer
from motif_jax.rl.step import RLStepConfig, jit_old_logprobs, jit_rl_step, rl_updates
from motif_jax.train_state import TrainState, init_train_state


@dataclasses.dataclass(frozen=True)
class RLTrainConfig:
  num_steps: int  # rollout batches
  prompts_per_batch: int  # prompts per rollout batch (x rl.group_size trajectories)
  rows: int  # packed rows of an update batch
  sft_rows: int  # packed SFT rows added to each update batch when rl.sft_coef > 0
  seq_len: int  # tokens per packed row (>= longest prompt + max_new_tokens)
  max_new_tokens: int  # completion budget
  max_refills: int  # extra sampler calls per batch when the online filter drops groups
  prompts: str  # toy | toy_fresh (data.toy ladder: SFT's / new problems) | JSONL/Parquet files
  num_microbatches: int
  seed: int
  log_every: int
  eval_every: int  # rollout batches; 0 = at the end only
  eval_problems: int  # held-out problems per domain and difficulty (greedy accuracy); 0 = off
  eval_max_new_tokens: int
  max_bad_steps: int
  loss_impl: str

  def __post_init__(self):
    for name in ("num_steps", "prompts_per_batch", "rows", "seq_len", "max_new_tokens",
                 "num_microbatches", "log_every", "eval_max_new_tokens", "max_bad_steps"):
      if getattr(self, name) < 1:
        raise ValueError(f"train.{name}={getattr(self, name)} must be >= 1")
    for name in ("max_refills", "eval_every", "eval_problems", "sft_rows"):
      if getattr(self, name) < 0:
        raise ValueError(f"train.{name}={getattr(self, name)} must be >= 0")
    if not self.prompts.strip():
      raise ValueError("train.prompts is empty: set it to toy or to JSONL/Parquet prompt records")
    for name in ("rows", "sft_rows"):
      if getattr(self, name) % self.num_microbatches:
        raise ValueError(f"train.{name}={getattr(self, name)} must be a multiple of "
                         f"train.num_microbatches={self.num_microbatches}")


@dataclasses.dataclass(frozen=True)
class RLRunConfig:
  model: ModelConfig
  optim: OptimConfig
  data: DataConfig
  rl: RLConfig
  rewards: rewards.RewardConfig
  train: RLTrainConfig
  ckpt: loop.CkptConfig
  mesh: dict

  @classmethod
  def from_config_dict(cls, config) -> "RLRunConfig":
    run = cls(model=ModelConfig.from_config_dict(config.model),
              optim=OptimConfig.from_config_dict(config.optim),
              data=DataConfig.from_config_dict(config.data),
              rl=RLConfig.from_config_dict(config.rl),
              rewards=typed_config.build(rewards.RewardConfig, config.rewards, "rewards"),
              train=typed_config.build(RLTrainConfig, config.train, "train"),
              ckpt=typed_config.build(loop.CkptConfig, config.ckpt, "ckpt"),
              mesh=shd.parse_mesh(",".join(f"{k}={v}" for k, v in config.mesh.items())))
    curate.check_tokenizer_fits(run.data, run.model.vocab_size)
    if run.rl.sft_coef and not run.train.sft_rows:
      raise ValueError(f"rl.sft_coef={run.rl.sft_coef} needs train.sft_rows >= 1 (SFT rows of "
                       f"data.inputs per update)")
    if run.train.sft_rows and not run.rl.sft_coef:
      raise ValueError(f"train.sft_rows={run.train.sft_rows} is unused while rl.sft_coef=0")
    return run

  def check_mesh(self, mesh) -> None:
    shape = dict(zip(mesh.axis_names, mesh.devices.shape))
    shards = shd.shard_count("batch", self.model.sharding, shape)
    for name in ("rows", "sft_rows"):
      if (getattr(self.train, name) // self.train.num_microbatches) % shards:
        raise ValueError(f"train.{name}={getattr(self.train, name)} / train.num_microbatches="
                         f"{self.train.num_microbatches} must divide over the {shards} batch "
                         f"shards of mesh {shape}")
    validate_sharding(self.model, shape)


@dataclasses.dataclass
class HostState:
  """Everything of the RL loop that lives on the host; `to_json` / `from_json` are exact."""

  rollout: int  # rollout batches done (the loop step)
  sample_calls: int  # sampler calls so far: the position of the sampling RNG stream
  queue: prompts.PromptQueue
  stats: filtering.PassRateStats
  filter: filtering.OnlineFilter
  replay: ReplayBuffer
  reward_ema_d: np.ndarray  # per-domain reward EMA (balance), NaN = unseen

  def to_json(self) -> dict[str, Any]:
    meta, arrays = self.replay.state()
    return {"rollout": self.rollout, "sample_calls": self.sample_calls,
            "queue": self.queue.state_dict(), "pass_rates": self.stats.state_dict(),
            "filter": self.filter.state_dict(),
            "replay": {"meta": meta, "arrays": checkpoint.arrays_to_json(arrays)},
            "reward_ema": checkpoint.arrays_to_json({"d": self.reward_ema_d})}

  def load_json(self, saved: dict[str, Any]) -> None:
    self.rollout, self.sample_calls = int(saved["rollout"]), int(saved["sample_calls"])
    self.queue.load_state_dict(saved["queue"])
    self.stats = filtering.PassRateStats.from_state_dict(saved["pass_rates"])
    self.filter.load_state_dict(saved["filter"])
    self.replay = ReplayBuffer.from_state(saved["replay"]["meta"],
                                          checkpoint.arrays_from_json(saved["replay"]["arrays"]))
    self.reward_ema_d = checkpoint.arrays_from_json(saved["reward_ema"])["d"]


def load_pool(run: RLRunConfig, tokenizer) -> prompts.PromptPool:
  records = (prompts.toy_prompts(run.data.toy, run.train.prompts)
             if run.train.prompts in prompts.TOY_SOURCES else
             eval_run.read_prompts(run.train.prompts, formats.read_spec(run.data)))
  return prompts.make_pool(records, run.rl.domain_names, tokenizer, run.data.template)


def check_capacity(run: RLRunConfig, longest_prompt: int, log: Callable[[str], None]) -> None:
  """A row must hold the longest possible trajectory; rows that may not hold a whole batch of
  them are allowed (typical completions are shorter), with a warning: what does not fit is left
  out of the update and counted in pack/dropped."""
  longest = longest_prompt + run.train.max_new_tokens - 1  # positions of the longest trajectory
  per_row = run.train.seq_len // longest
  needed = run.train.prompts_per_batch * run.rl.group_size
  if per_row == 0:
    raise ValueError(f"train.seq_len={run.train.seq_len} cannot hold the longest prompt plus "
                     f"train.max_new_tokens ({longest} positions)")
  if run.train.rows * per_row < needed:
    average = run.train.rows * run.train.seq_len // needed
    log(f"warning: train.rows={run.train.rows} x train.seq_len={run.train.seq_len} hold "
        f"{needed} trajectories only if they average under {average} positions (up to "
        f"{longest}); rows >= {-(-needed // per_row)} hold any batch")


def train(config, workdir: str, *, log: Callable[[str], None] = print) -> dict:
  """Run (or resume) RL as `config` says (configs/rl.py); returns the SFT trainer's summary keys
  plus "rl" (the last step's RL metrics)."""
  run = RLRunConfig.from_config_dict(config)
  if run.rl.init_from and not Path(run.rl.init_from).exists():
    raise ValueError(f"rl.init_from={run.rl.init_from} does not exist")
  workdir_path, mesh = loop.prepare(config, workdir, run.mesh, log)
  run.check_mesh(mesh)
  with jax.set_mesh(mesh):
    return _train(run, workdir_path, mesh, log)


@functools.lru_cache(maxsize=4)
def _jitted(step_cfg: RLStepConfig, optim: OptimConfig, seed: int, mesh) -> tuple:
  """(optimizer, abstract state, state shardings, batch sharding, jitted rl_step, jitted π
  log-probs), built once per setting in a process: runs that share it (a sweep, a resume test)
  compile once."""
  optimizer, schedule = make_optimizer(optim)
  abstract_state, state_shardings = loop.abstract_train_state(step_cfg.model, optimizer, seed,
                                                              mesh)
  batch_sharding = NamedSharding(mesh, shd.spec_for(("batch", None), step_cfg.model.sharding))
  return (optimizer, abstract_state, state_shardings, batch_sharding,
          jit_rl_step(step_cfg, optimizer, schedule, state_shardings, batch_sharding),
          jit_old_logprobs(step_cfg, state_shardings.params, batch_sharding))


def _train(run: RLRunConfig, workdir: Path, mesh, log: Callable) -> dict:
  step_cfg = RLStepConfig(run.model, run.rl, run.train.num_microbatches, run.train.loss_impl)
  optimizer, abstract_state, state_shardings, batch_sharding, step_fn, logprobs_fn = _jitted(
      step_cfg, run.optim, run.train.seed, mesh)
  tokenizer = curate.make_tokenizer(run.data)
  pool = load_pool(run, tokenizer)
  check_capacity(run, max(len(t) for t in pool.prompt_tokens), log)
  evaluator = evaluation.Evaluator(run.data, run.model, eval_problems=run.train.eval_problems,
                                   max_new_tokens=run.train.eval_max_new_tokens, mesh=mesh,
                                   batch_sharding=batch_sharding)
  settings = loop.LoopSettings("rl", run.train.num_steps, run.train.log_every,
                               run.train.eval_every, run.train.max_bad_steps,
                               postfix=(("reward", "rl/reward"), ("kl", "kl/old")))
  shell = loop.Shell(workdir, settings, run.ckpt, evaluator, log=log)
  sft_it = _sft_iterator(run, log) if run.rl.sft_coef else None
  scorer = rewards.Scorer(run.rewards)
  try:
    host = _fresh_host_state(run, pool)
    init_params = None
    restored = shell.restore(abstract_state, sft_it, host=True)
    if restored is not None:
      _, state, saved = restored
      host.load_json(saved)
    else:
      init_params = loop.initial_params(run.rl.init_from, "rl.init_from", run.model,
                                        run.train.seed, mesh, log, tokenizer=run.data.tokenizer)
      state = jax.jit(functools.partial(init_train_state, optimizer=optimizer,
                                        seed=run.train.seed),
                      out_shardings=state_shardings)(jax.tree.map(lambda x: x.copy(),
                                                                  init_params))
    ref_params = None
    if run.rl.kl_coef:  # the frozen reference: the initial policy
      ref_params = init_params if init_params is not None else loop.initial_params(
          run.rl.init_from, "rl.init_from", run.model, run.train.seed, mesh, log)
    if restored is None and run.rl.offline_prompts:
      _offline_pass(state.params, run, pool, host, tokenizer, scorer, log)
    step = _RLStep(run, pool, host, tokenizer, scorer, ref_params, step_fn, logprobs_fn,
                   batch_sharding, jax.random.wrap_key_data(np.asarray(jax.device_get(state.rng))),
                   sft_it)
    summary = shell.run(state, host.rollout, step, data_iterator=sft_it, host_state=host.to_json)
    summary["rl"] = step.last
    return summary
  finally:
    scorer.close()
    shell.close()


def _sft_iterator(run: RLRunConfig, log: Callable[[str], None]):
  """Packed SFT batches of `train.sft_rows` x `train.seq_len` from data.inputs (every process
  reads the whole batch, as it builds the whole RL batch)."""
  data = dataclasses.replace(run.data, seq_len=run.train.seq_len,
                             global_batch_size=run.train.sft_rows)
  ds, curation = pipeline.sft_dataset(data, process_index=0, process_count=1)
  if curation is not None:
    log(f"SFT term: {len(curation.kept)} of {len(curation.scored)} records kept by the filters")
  return iter(ds)


def _fresh_host_state(run: RLRunConfig, pool: prompts.PromptPool) -> HostState:
  d = len(run.rl.domain_names)
  return HostState(
      rollout=0, sample_calls=0,
      queue=prompts.PromptQueue.create(pool.domain_p, d, run.train.seed),
      stats=filtering.PassRateStats.create(len(pool), low=run.rl.pass_rate_low,
                                           high=run.rl.pass_rate_high,
                                           ema_weight=run.rl.pass_rate_ema),
      filter=filtering.OnlineFilter(run.train.prompts_per_batch, enabled=run.rl.online_filter),
      replay=ReplayBuffer(run.rl.replay_capacity, run.rl.max_staleness, seed=run.train.seed),
      reward_ema_d=np.full(d, np.nan))


def _offline_pass(params, run: RLRunConfig, pool, host: HostState, tokenizer, scorer, log):
  """rl.offline_samples scored samples of the first rl.offline_prompts prompts of each domain
  (through the evaluation module) seed the pass-rate statistics before RL."""
  chosen = [int(p) for d in range(len(run.rl.domain_names))
            for p in np.flatnonzero(pool.domain_p == d)[:run.rl.offline_prompts]]
  cfg = evaluation.EvalConfig(num_samples=run.rl.offline_samples,
                              max_new_tokens=run.train.max_new_tokens,
                              temperature=run.rl.temperature, top_p=1.0, top_k=0, ks=(1,),
                              prompt_batch=run.train.prompts_per_batch, seed=run.train.seed)
  result = evaluation.evaluate(params, [pool.records[p] for p in chosen], cfg, model=run.model,
                               tokenizer=tokenizer, template=run.data.template, scorer=scorer)
  index = {evaluation.prompt_id(pool.records[p]): p for p in chosen}
  moved = host.stats.update([index[row["prompt_id"]] for row in result.rows],
                            [row["correct"] for row in result.rows])
  log(f"offline pass: {len(chosen)} prompts x {run.rl.offline_samples} samples, pass rate "
      f"{result.metrics['overall']['pass@1']:.3f}; {moved['retired']} outside the band "
      f"[{run.rl.pass_rate_low}, {run.rl.pass_rate_high}]")


class _RLStep:
  """One rollout batch: collect groups, mix replay, pack, update; the shell's step function."""

  def __init__(self, run: RLRunConfig, pool, host: HostState, tokenizer, scorer, ref_params,
               step_fn, old_logprobs_fn, batch_sharding, base_key, sft_it=None):
    self.run, self.pool, self.host, self.sft_it = run, pool, host, sft_it
    self.tokenizer, self.scorer, self.ref_params = tokenizer, scorer, ref_params
    self.step_fn, self.old_logprobs_fn = step_fn, old_logprobs_fn
    self.batch_sharding, self.base_key = batch_sharding, base_key
    self.cfg = RLStepConfig(run.model, run.rl, run.train.num_microbatches, run.train.loss_impl)
    self.last: dict[str, float] = {}

  def __call__(self, state: TrainState, step: int) -> tuple[TrainState, dict]:
    t0 = time.perf_counter()
    version = int(state.step)
    groups, m = self._collect(state.params, version)
    trajectories = rollout.with_advantages(groups, self.run.rl)
    size = self.run.train.prompts_per_batch * self.run.rl.group_size
    batch_t, counts = self.host.replay.mix(trajectories, size, self.run.rl.replay_fraction,
                                           version)
    self.host.replay.add(trajectories[counts["replay/fresh"]:])  # unused fresh: for later
    m.update(counts)
    m["replay/size"] = len(self.host.replay.items)
    batch_t, m["pack/dropped"] = first_fit(batch_t, rows=self.run.train.rows,
                                           seq_len=self.run.train.seq_len)
    t1 = time.perf_counter()
    state, updates = rl_updates(self.step_fn, state, self._device_batch(batch_t),
                                cfg=self.cfg, old_logprobs_fn=self.old_logprobs_fn)
    m.update(_mean_metrics(jax.device_get(updates)))
    m["perf/update_s"] = time.perf_counter() - t1
    m["perf/step_s"] = time.perf_counter() - t0
    for part in ("sample", "score", "update"):  # shares of the rollout batch's wall time
      m[f"perf/{part}_share"] = m[f"perf/{part}_s"] / max(m["perf/step_s"], 1e-9)
    self.host.rollout = step
    self.last = m
    return state, m

  def _collect(self, params, version: int) -> tuple[list, dict]:
    run, host = self.run, self.host
    metrics = {"perf/sample_s": 0.0, "perf/score_s": 0.0}
    dropped_before = host.filter.counts["dropped"]
    spare, fresh = [], []
    moved = {"retired": 0, "readmitted": 0, "active": 0}
    calls = 0
    while calls == 0 or (not host.filter.ready and calls <= run.train.max_refills):
      ids = host.queue.draw(self._domain_counts(), host.stats.active())
      sampled = rollout.sample_groups(
          params, self.pool, ids, model=run.model, rl=run.rl,
          max_new_tokens=run.train.max_new_tokens, tokenizer=self.tokenizer,
          template=run.data.template, scorer=self.scorer,
          key=jax.random.fold_in(self.base_key, host.sample_calls), version=version)
      host.sample_calls, calls = host.sample_calls + 1, calls + 1
      metrics["perf/sample_s"] += sampled.sample_s
      metrics["perf/score_s"] += sampled.score_s
      scored = [t for g in sampled.groups for t in g.payload]
      fresh += scored
      change = host.stats.update([t.prompt_id for t in scored], [t.passed for t in scored])
      moved = {k: v + change[k] if k != "active" else change[k] for k, v in moved.items()}
      spare += [g for g in sampled.groups if run.rl.online_filter
                and filtering.degenerate(g.rewards)]
      host.filter.add(sampled.groups)
    if host.filter.ready:
      groups, surplus = host.filter.take()
      self.host.replay.add(rollout.with_advantages(surplus, run.rl))
      forced = 0
    else:  # refills ran out: top up with groups the filter dropped (zero advantages)
      groups = host.filter.pending + spare[:host.filter.needed]
      forced = len(groups) - len(host.filter.pending)
      host.filter.pending = []
    host.reward_ema_d = balance.update_reward_ema(
        host.reward_ema_d, [t.reward for t in fresh], [t.domain for t in fresh],
        weight=run.rl.pass_rate_ema)
    metrics.update(_rollout_metrics(fresh, run.rl.domain_names))
    metrics.update(host.filter.metrics())
    metrics.update({
        "rollout/sampler_calls": calls, "rollout/forced_groups": forced,
        "filter/step_dropped_groups": host.filter.counts["dropped"] - dropped_before,
        "band/active_prompts": moved["active"], "band/retired": moved["retired"],
        "band/readmitted": moved["readmitted"], "band/band_ignored": host.queue.band_ignored,
        "policy/version": version})
    for name, w in zip(run.rl.domain_names, self._weights()):
      metrics[f"balance/{name}/weight"] = float(w)
    return groups, metrics

  def _weights(self) -> np.ndarray:
    rl, host = self.run.rl, self.host
    learnable = balance.learnable_share(host.stats.active(), self.pool.domain_p,
                                        len(rl.domain_names))
    return balance.WEIGHTS[rl.balance](rl.fixed_weights, host.reward_ema_d, learnable,
                                       floor=rl.balance_floor)

  def _domain_counts(self) -> np.ndarray:
    return balance.allocate(self.run.train.prompts_per_batch, self._weights())

  def _device_batch(self, trajectories) -> dict[str, jax.Array]:
    batch = pack_trajectories(trajectories, rows=self.run.train.rows,
                              seq_len=self.run.train.seq_len)
    if self.sft_it is not None:
      batch = add_sft_rows(batch, next(self.sft_it), coef=self.run.rl.sft_coef,
                           level=self.run.rl.loss_level)
    out = {k: jax.make_array_from_callback(v.shape, self.batch_sharding,
                                           lambda idx, v=v: v[idx]) for k, v in batch.items()}
    if self.ref_params is not None:
      out["ref_logprobs"] = self.old_logprobs_fn(self.ref_params, out)
    return out


def _rollout_metrics(fresh: list, names) -> dict[str, float]:
  """Reward, pass rate, truncation and length of every sample drawn (filtered ones included),
  overall and per domain (`rollout/<domain>/...`)."""
  rewards_n = [t.reward for t in fresh]
  passed_n = [t.passed for t in fresh]
  lengths_n = [len(t.completion_tokens) for t in fresh]
  out = {f"rollout/{k.split('/', 1)[1]}": v for k, v in balance.domain_metrics(
      rewards_n, passed_n, lengths_n, [t.domain for t in fresh], names).items()}
  return out | {"rollout/reward": float(np.mean(rewards_n)),
                "rollout/pass_rate": float(np.mean(passed_n)),
                "rollout/truncation": float(np.mean([t.truncated for t in fresh])),
                "rollout/response_length": float(np.mean(lengths_n))}


def _mean_metrics(updates: list[dict]) -> dict[str, float]:
  """Means (maxima for */max) over the updates of one rollout; the last bad-step count; skipped
  steps and tokens summed."""
  out = {k: float(np.max([u[k] for u in updates]) if k.endswith("/max")
                  else np.mean([u[k] for u in updates])) for k in updates[0]}
  out["train/bad_steps"] = float(updates[-1]["train/bad_steps"])
  out["train/skipped"] = float(sum(u["train/skipped"] for u in updates))
  out["train/tokens"] = float(sum(u["train/tokens"] for u in updates))
  out["rl/updates"] = float(len(updates))
  return out
