"""Replay buffer: staleness bound, mixing ratio, capacity, deterministic draws, exact round trip."""

import dataclasses

import numpy as np
import pytest

from motif_jax.rl.replay import ReplayBuffer, Trajectory


def traj(i, version):
  rng = np.random.default_rng(i)
  c = 1 + i % 5
  return Trajectory(prompt_tokens=rng.integers(0, 100, 2 + i % 3).astype(np.int32),
                    completion_tokens=rng.integers(0, 100, c).astype(np.int32),
                    behaviour_logprobs=-rng.random(c).astype(np.float32), reward=float(i % 2),
                    advantage=0.25 * i - 1, passed=bool(i % 2), truncated=i % 3 == 0,
                    prompt_id=i // 4, domain=i % 2, version=version)


def test_mix_ratio_and_staleness():
  buf = ReplayBuffer(capacity=100, max_staleness=2, seed=3)
  # Version 0: the buffer is empty, so the whole batch is fresh.
  batch, c = buf.mix([traj(i, 0) for i in range(8)], 8, 0.5, version=0)
  assert (c["replay/fresh"], c["replay/replayed"], len(batch)) == (8, 0, 8)
  for v in (1, 2):
    batch, c = buf.mix([traj(10 * v + i, v) for i in range(8)], 8, 0.5, version=v)
    assert (c["replay/fresh"], c["replay/replayed"]) == (4, 4)
    assert sum(t.version < v for t in batch) == 4  # replayed ones are from older versions
  assert len(buf.items) == 16
  # Version 3: version 0's 8 trajectories are 3 > max_staleness behind and are dropped first.
  batch, c = buf.mix([traj(30 + i, 3) for i in range(8)], 8, 0.25, version=3)
  assert c["replay/dropped_stale"] == 8 and c["replay/replayed"] == 2
  assert min(t.version for t in batch) >= 1 and all(t.version >= 1 for t in buf.items)
  with pytest.raises(ValueError, match="cannot fill a batch of 8"):
    ReplayBuffer(10, 2).mix([traj(0, 0)], 8, 0.5, version=0)


def test_capacity_evicts_the_oldest_and_draws_are_deterministic():
  buf = ReplayBuffer(capacity=5, max_staleness=9, seed=1)
  buf.add([traj(i, 0) for i in range(8)])
  assert [t.advantage for t in buf.items] == [traj(i, 0).advantage for i in range(3, 8)]
  twin = ReplayBuffer(capacity=5, max_staleness=9, seed=1, items=list(buf.items))
  a, b = buf.sample(3), twin.sample(3)
  assert [t.advantage for t in a] == [t.advantage for t in b]
  assert len({t.advantage for t in a}) == 3  # without replacement
  other = ReplayBuffer(5, 9, seed=2, items=list(buf.items))
  draws = [[t.advantage for t in other.sample(3)] for _ in range(4)]
  assert len({tuple(d) for d in draws}) > 1  # the stream advances


def test_state_round_trips_exactly_through_files(tmp_path):
  buf = ReplayBuffer(capacity=50, max_staleness=2, seed=7)
  buf.add([traj(i, i // 4) for i in range(12)])
  buf.sample(4)
  buf.save(str(tmp_path))
  restored = ReplayBuffer.load(str(tmp_path))
  assert (restored.capacity, restored.max_staleness, restored.seed, restored.draws) == (
      50, 2, 7, 1)
  assert len(restored.items) == 12
  for x, y in zip(buf.items, restored.items):
    for f in dataclasses.fields(Trajectory):
      a, b = getattr(x, f.name), getattr(y, f.name)
      if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
      else:
        assert a == b and type(a) is type(b), f.name
  # The restored buffer continues exactly as the original would.
  assert [t.advantage for t in restored.sample(5)] == [t.advantage for t in buf.sample(5)]
  empty = ReplayBuffer(4, 1)
  empty.save(str(tmp_path / "empty"))
  assert ReplayBuffer.load(str(tmp_path / "empty")).items == []


def _t(prompt, completion, logprobs, adv, domain=0):
  return Trajectory(np.array(prompt, np.int32), np.array(completion, np.int32),
                    np.array(logprobs, np.float32), reward=1.0, advantage=adv, passed=True,
                    truncated=False, prompt_id=0, domain=domain, version=0)


def test_pack_trajectories_aligns_completion_log_probs_with_their_targets():
  from motif_jax.rl.packing import pack_trajectories
  a = _t([5, 6], [7, 8, 9], [-.1, -.2, -.3], 1.5)  # 4 positions
  b = _t([1], [2, 3], [-.4, -.5], -0.5, domain=1)  # 2 positions: fills row 0 exactly
  c = _t([4, 4], [3], [-.6], 2.0)  # 2 positions: row 1
  batch = pack_trajectories([a, b, c], rows=2, seq_len=6)
  np.testing.assert_array_equal(batch["tokens"], [[5, 6, 7, 8, 1, 2], [4, 4, 0, 0, 0, 0]])
  np.testing.assert_array_equal(batch["targets"], [[6, 7, 8, 9, 2, 3], [4, 3, 0, 0, 0, 0]])
  np.testing.assert_array_equal(batch["loss_mask"], [[0, 1, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 1, 2, 2], [1, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(batch["sequence_ids"], batch["segment_ids"])
  np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 3, 0, 1], [0, 1, 0, 0, 0, 0]])
  np.testing.assert_allclose(batch["behaviour_logprobs"],
                             [[0, -.1, -.2, -.3, -.4, -.5], [0, -.6, 0, 0, 0, 0]])
  np.testing.assert_array_equal(batch["old_logprobs"], batch["behaviour_logprobs"])
  np.testing.assert_allclose(batch["advantages"][0], [1.5] * 4 + [-0.5] * 2)
  np.testing.assert_array_equal(batch["domain_ids"][0], [0, 0, 0, 0, 1, 1])
  with pytest.raises(ValueError, match="do not fit in rows=1"):
    pack_trajectories([a, b, c], rows=1, seq_len=6)
  with pytest.raises(ValueError, match="needs 4 positions; rows hold seq_len=3"):
    pack_trajectories([a], rows=4, seq_len=3)


def test_first_fit_leaves_out_exactly_what_does_not_fit():
  from motif_jax.rl.packing import first_fit, pack_trajectories
  a = _t([5, 6], [7, 8, 9], [-.1, -.2, -.3], 1.5)  # 4 positions
  b = _t([1], [2, 3], [-.4, -.5], -0.5)  # 2
  c = _t([4, 4], [3, 3, 3], [-.6] * 3, 2.0)  # 4: no room left after a and b in one row of 6
  d = _t([4], [3], [-.7], 0.0)  # 1: also fits nowhere (row 0 is full)
  kept, dropped = first_fit([a, b, c, d], rows=1, seq_len=6)
  assert [t.advantage for t in kept] == [1.5, -0.5] and dropped == 2
  pack_trajectories(kept, rows=1, seq_len=6)  # the kept ones pack
  kept, dropped = first_fit([a, b, c, d], rows=2, seq_len=6)  # c and d share row 1
  assert len(kept) == 4 and dropped == 0
