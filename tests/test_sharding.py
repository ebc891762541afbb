"""Sharding rules, specs, meshes and the validation that names config fields."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from configs import motif2_12b, tiny
from motif_jax import sharding as shd
from motif_jax.model import ModelConfig, param_partition_specs, param_specs, validate_sharding


def test_spec_for_maps_logical_to_mesh_axes():
  rules = shd.ShardingRules()
  assert shd.spec_for(("layers", "embed", "heads", "head_dim"), rules) == P(
      None, "fsdp", "tensor", None)
  assert shd.spec_for(("batch", "seq", None), rules) == P(("data", "fsdp"), "sequence", None)


def test_spec_for_raises_when_two_logical_axes_share_a_mesh_axis():
  rules = shd.ShardingRules()
  with pytest.raises(ValueError, match="'heads' and 'ffw' both map to mesh axis 'tensor'"):
    shd.spec_for(("heads", "ffw"), rules)
  with pytest.raises(ValueError, match="'batch' and 'embed' both map to mesh axis 'fsdp'"):
    shd.spec_for(("batch", "seq", "embed"), rules)


def test_unknown_names_are_rejected():
  with pytest.raises(ValueError, match="unknown logical axis 'hidden'"):
    shd.spec_for(("hidden",), shd.ShardingRules())
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    shd.ShardingRules(heads="model")
  with pytest.raises(ValueError, match="expected AXIS=N"):
    shd.parse_mesh("fsdp=8,model=2")
  with pytest.raises(ValueError, match="positive integer"):
    shd.parse_mesh("fsdp=0")
  assert shd.parse_mesh("fsdp=-1")["fsdp"] == -1


def test_activation_rules_keep_batch_axes_off_other_dims():
  """FSDP shards weights on `embed`; activations are batch-sharded over the same axis instead."""
  act = shd.activation_rules(shd.ShardingRules())
  assert act.embed is None and act.batch == ("data", "fsdp") and act.heads == ("tensor",)
  assert shd.spec_for(("batch", "seq", "embed"), act) == P(("data", "fsdp"), "sequence", None)


def test_parse_and_make_mesh():
  assert shd.parse_mesh("fsdp=2,tensor=4") == dict(data=1, fsdp=2, tensor=4, sequence=1)
  mesh = shd.make_mesh(dict(fsdp=2, tensor=4))
  assert mesh.axis_names == shd.MESH_AXES and mesh.devices.shape == (1, 2, 4, 1)
  with pytest.raises(ValueError, match="needs 16 devices, 8 are available"):
    shd.make_mesh(dict(fsdp=16))
  assert shd.make_mesh(dict(data=2, fsdp=-1)).devices.shape == (2, 4, 1, 1)  # -1: the rest
  assert shd.make_mesh(dict(tensor=2)).devices.size == 2  # a subset of one process's devices


@pytest.mark.parametrize("config", [motif2_12b.get_config(), tiny.get_config(),
                                    tiny.get_config("gqa")])
def test_every_param_leaf_has_a_spec_of_its_rank(config):
  cfg = ModelConfig.from_config_dict(config.model)
  specs = param_specs(cfg)
  parts = param_partition_specs(cfg)
  assert jax.tree.structure(specs, is_leaf=lambda x: not isinstance(x, dict)) == jax.tree.structure(
      parts, is_leaf=lambda x: isinstance(x, P))
  for spec, part in zip(jax.tree.leaves(specs), jax.tree.leaves(parts, is_leaf=lambda x: isinstance(x, P))):
    assert isinstance(part, P) and len(part) == len(spec.shape)


def test_validation_names_the_field_that_does_not_divide():
  cfg = ModelConfig.from_config_dict(motif2_12b.get_config().model)
  validate_sharding(cfg, dict(fsdp=8, tensor=8))
  with pytest.raises(ValueError, match=r"model\.num_heads=40 does not divide .*tensor=3"):
    validate_sharding(cfg, dict(tensor=3))
  with pytest.raises(ValueError, match=r"model\.d_model=4096 does not divide .*fsdp=3"):
    validate_sharding(cfg, dict(fsdp=3))
  small = ModelConfig.from_config_dict(tiny.get_config().model)
  with pytest.raises(ValueError, match=r"model\.num_kv_heads=8 .*tensor=16"):
    validate_sharding(small, dict(tensor=16))
