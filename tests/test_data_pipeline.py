"""The Grain SFT pipeline: exact resume from a saved state, per-process slices, global batches."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from configs import common
from motif_jax.data import pipeline
from motif_jax.data.config import DataConfig
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import ByteTokenizer
from data_helpers import small_config

TEMPLATE = ChatTemplate()
TOK = ByteTokenizer(TEMPLATE.special_tokens())


@pytest.fixture(scope="module")
def records():
  cfg = small_config(toy=dict(problems=20, reference_size=20))
  return pipeline.load_sft_records(cfg)[0]


def _build(records, **overrides):
  kwargs = dict(tokenizer=TOK, template=TEMPLATE, seq_len=512, global_batch_size=4, seed=3,
                shuffle=True, num_epochs=0, packing_bins=4, process_index=0, process_count=1,
                workers=0, worker_buffer=2, prefetch=2)
  return pipeline.build_sft_dataset(records, **{**kwargs, **overrides})


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("workers", [0, 1])
def test_resumed_iterator_yields_identical_batches(records, workers):
  ds = _build(records, workers=workers)
  it = iter(ds)
  try:
    first = _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # what Orbax's JsonSave stores
    expected = _take(it, 12)  # crosses epoch boundaries (7 batches per epoch)
  finally:
    it.close()
  resumed = iter(_build(records, workers=workers))
  try:
    resumed.set_state(state)
    _assert_same(_take(resumed, 12), expected)
  finally:
    resumed.close()
  assert first[0]["tokens"].shape == (4, 512) and first[0]["tokens"].dtype == np.int32
  assert not all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, expected))


def test_batches_are_deterministic_and_depend_on_the_seed(records):
  def take(seed):
    it = iter(_build(records, seed=seed))
    try:
      return _take(it, 2)
    finally:
      it.close()

  _assert_same(take(3), take(3))
  assert not np.array_equal(take(3)[0]["tokens"], take(4)[0]["tokens"])


def _prompts(batches):
  """Each packed segment's prompt text (up to the assistant tag)."""
  out = []
  for batch in batches:
    for tokens, seg in zip(batch["tokens"], batch["segment_ids"]):
      for s in range(1, seg.max() + 1):
        out.append(TOK.decode(tokens[seg == s]).split("<|assistant|>")[0])
  return out


def test_processes_read_disjoint_slices_that_cover_the_data(records):
  seen = []
  for index in range(2):
    it = iter(_build(records, num_epochs=1, shuffle=False, seq_len=512, global_batch_size=2,
                     process_index=index, process_count=2))
    try:
      seen.append(_prompts(list(it)))  # one epoch; per-process batches of 1 row drop nothing
    finally:
      it.close()
  assert not set(seen[0]) & set(seen[1])
  expected = sorted("<|user|>" + r.prompt for r in records)
  assert sorted(seen[0] + seen[1]) == expected
  with pytest.raises(ValueError, match="global_batch_size=3 must be a multiple"):
    _build(records, global_batch_size=3, process_count=2)


def test_make_global_batch_on_the_8_device_mesh(records):
  it = iter(_build(records, global_batch_size=8))
  try:
    batch = next(it)
  finally:
    it.close()
  mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
  sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
  arrays = pipeline.make_global_batch(batch, sharding)
  assert arrays["tokens"].shape == (8, 512) and arrays["tokens"].sharding == sharding
  np.testing.assert_array_equal(np.asarray(arrays["loss_mask"]), batch["loss_mask"])


def test_sft_dataset_from_config_filters_then_packs():
  cfg = small_config(toy=dict(problems=10, reference_size=10), global_batch_size=2)
  ds, curation = pipeline.sft_dataset(cfg, process_index=0, process_count=1)
  kept = {"<|user|>" + item.record.prompt for item in curation.kept}
  it = iter(ds)
  try:
    batches = _take(it, 4)
  finally:
    it.close()
  assert set(_prompts(batches)) <= kept
  assert all(item.record.source == "teacher_aligned" for item in curation.kept)


def test_data_config_errors_name_the_field():
  config = common.data()
  config.seq_len = 0
  with pytest.raises(ValueError, match=r"data\.seq_len=0"):
    DataConfig.from_config_dict(config)
  config = common.data()
  config.filters.verify.methods = "math=sympy"
  with pytest.raises(ValueError, match=r"data\.filters\.verify\.methods math='sympy'"):
    DataConfig.from_config_dict(config)
  values = common.data().to_dict()
  values["filters"]["dedup"]["bands"] = 3
  with pytest.raises(ValueError, match=r"data\.filters\.dedup\.num_perm=128"):
    DataConfig.from_config_dict(values)
  values = common.data().to_dict()
  values["toy"]["colour"] = 1
  with pytest.raises(ValueError, match=r"unknown config fields: data\.toy\.colour"):
    DataConfig.from_config_dict(values)
  values["toy"].pop("colour")
  del values["seed"]
  with pytest.raises(ValueError, match=r"missing config fields: data\.seed"):
    DataConfig.from_config_dict(values)
