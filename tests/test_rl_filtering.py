"""Pass-rate band, per-prompt statistics, the online filter's bookkeeping, domain balancing."""

import json

import numpy as np
import pytest

from motif_jax.rl import balance, filtering


def test_offline_pass_rates_and_the_band_keep_exactly_the_prompts_inside():
  # 5 prompts x k=4 samples: 0/4, 1/4, 2/4, 4/4 and 3/4 passes.
  passed = np.array([0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1])
  prompts = np.repeat(np.arange(5), 4)
  passes, samples = filtering.offline_pass_rates(prompts, passed, 5)
  np.testing.assert_array_equal(passes, [0, 1, 2, 4, 3])
  np.testing.assert_array_equal(samples, 4)
  keep = filtering.in_band(passes / samples, 0.25, 0.75)
  np.testing.assert_array_equal(keep, [False, True, True, False, True])  # closed band
  keep = filtering.in_band(passes / samples, 0.3, 0.7)
  np.testing.assert_array_equal(keep, [False, False, True, False, False])


def test_pass_rate_stats_retire_readmit_and_round_trip():
  stats = filtering.PassRateStats.create(3, low=0.1, high=0.9, ema_weight=0.5)
  assert stats.active().all()  # unseen prompts are kept until measured
  # Prompt 0 solves 4/4 (out), prompt 1 2/4 (in), prompt 2 unseen.
  moved = stats.update([0, 0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 1, 0])
  assert moved == {"retired": 1, "readmitted": 0, "active": 2}
  np.testing.assert_array_equal(stats.active(), [False, True, True])
  # Prompt 0 fails 2/2 now: EMA 0.5 * 1 + 0.5 * 0 = 0.5, back inside the band.
  moved = stats.update([0, 0], [0, 0])
  assert moved == {"retired": 0, "readmitted": 1, "active": 3}
  np.testing.assert_allclose(stats.ema[:2], [0.5, 0.5])
  np.testing.assert_array_equal(stats.samples, [6, 4, 0])
  np.testing.assert_array_equal(stats.passes, [4, 2, 0])
  restored = filtering.PassRateStats.from_state_dict(json.loads(json.dumps(stats.state_dict())))
  for name in ("samples", "passes", "ema"):
    np.testing.assert_array_equal(getattr(restored, name), getattr(stats, name))
  assert (restored.low, restored.high, restored.ema_weight) == (0.1, 0.9, 0.5)
  # Both continue identically.
  assert restored.update([2, 2], [1, 1]) == stats.update([2, 2], [1, 1])
  np.testing.assert_array_equal(restored.active(), stats.active())


def _group(pid, rewards):
  return filtering.Group(pid, rewards, [r >= 1 for r in rewards], payload=f"p{pid}")


def test_online_filter_counts_add_up_and_refills_to_a_full_batch():
  filt = filtering.OnlineFilter(groups_per_batch=3)
  filt.add([_group(0, [1, 1, 1]), _group(1, [0, 1, 0]), _group(2, [0, 0, 0])])
  assert not filt.ready and filt.needed == 2
  with pytest.raises(ValueError, match="only 1 of 3 groups"):
    filt.take()
  filt.add([_group(3, [1, 0, 1]), _group(4, [0.5, 0.5, 0.5]), _group(5, [0, 0, 1]),
            _group(6, [1, 0, 0])])
  batch, surplus = filt.take()
  assert [g.prompt_id for g in batch] == [1, 3, 5] and [g.prompt_id for g in surplus] == [6]
  c = filt.counts
  assert c["finished"] == 7 == c["kept"] + c["dropped"] and c["dropped"] == 3
  assert (c["dropped_all_pass"], c["dropped_all_fail"]) == (1, 2)  # 0.5s: none passed
  m = filt.metrics()
  # Pass rate over the 21 samples of finished groups: 3 + 1 + 0 + 2 + 0 + 1 + 1 = 8.
  assert m["filter/pass_rate"] == pytest.approx(8 / 21)
  assert m["filter/keep_rate"] == pytest.approx(4 / 7)
  assert not filt.ready and filt.needed == 3  # nothing pending after take
  off = filtering.OnlineFilter(groups_per_batch=2, enabled=False)
  off.add([_group(0, [1, 1]), _group(1, [0, 0])])
  assert off.ready and off.counts["dropped"] == 0
  restored = filtering.OnlineFilter(3)
  restored.load_state_dict(json.loads(json.dumps(filt.state_dict())))
  assert restored.metrics() == filt.metrics()


def test_domain_weights_fixed_adaptive_with_floor_and_allocation():
  np.testing.assert_allclose(balance.WEIGHTS["fixed"]((3, 1), None, None, floor=0.1), [.75, .25])
  # 1 - mean reward = (0.8, 0.2, 0) -> (0.8, 0.2, 0); floor 0.1: 0.1 + 0.7 * w.
  w = balance.WEIGHTS["reward"](None, np.array([0.2, 0.8, 1.0]), None, floor=0.1)
  np.testing.assert_allclose(w, [0.66, 0.24, 0.1])
  w = balance.WEIGHTS["learnable"](None, None, np.array([0.5, 0.0]), floor=0.2)
  np.testing.assert_allclose(w, [0.8, 0.2])
  np.testing.assert_array_equal(balance.allocate(10, np.array([0.66, 0.24, 0.1])), [7, 2, 1])
  np.testing.assert_array_equal(balance.allocate(3, np.ones(2)), [2, 1])
  share = balance.learnable_share(np.array([1, 0, 1, 1]), np.array([0, 0, 1, 1]), 3)
  np.testing.assert_allclose(share, [0.5, 1.0, 0.0])
  ema = balance.update_reward_ema(np.array([np.nan, 0.5, 0.2]), [1, 0, 0, 1], [0, 0, 1, 1],
                                  weight=0.5)
  np.testing.assert_allclose(ema, [0.5, 0.5, 0.2])  # first sets; 0.5*0.5+0.5*0.5; unseen keeps
  m = balance.domain_metrics([1, 0, 1], [1, 0, 1], [10, 20, 30], [0, 0, 1], ("math", "code"))
  assert m["domain/math/reward"] == 0.5 and m["domain/code/response_length"] == 30
  assert m["domain/math/samples"] == 2


def test_toy_prompt_sources_training_problems_or_fresh_ones_never_held_out():
  """train.prompts=toy are exactly the problems SFT trained on; toy_fresh are new problems of
  the same ladder (a different seeded stream) of which none is a held-out prompt."""
  import dataclasses
  from configs import sft
  from motif_jax.data import toy_corpus
  from motif_jax.data.config import DataConfig
  from motif_jax.rl import prompts
  toy = DataConfig.from_config_dict(sft.get_config("quickstart").data).toy
  toy = dataclasses.replace(toy, problems=300, heldout_per_difficulty=60)
  seen = [r.prompt for r in prompts.toy_prompts(toy, "toy")]
  assert seen == [p.prompt for p in toy_corpus.problems(toy, "train", toy.problems)]
  fresh = prompts.toy_prompts(toy, "toy_fresh")
  held_out = {p.prompt for p in toy_corpus.heldout(toy)}
  assert not {r.prompt for r in fresh} & held_out
  assert len(fresh) > 0.8 * len(seen)  # one-step prompts repeat across streams; most do not
  assert len({r.prompt for r in fresh} - set(seen)) > 0.5 * len(fresh)
  assert all(r.answer for r in fresh) and {r.source for r in fresh} == {"toy_fresh"}
  with pytest.raises(ValueError, match=r"train.prompts='toy_old' is not one of"):
    prompts.toy_prompts(toy, "toy_old")
