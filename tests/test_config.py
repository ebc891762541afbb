"""Typed config boundary: variants, conversion and errors that name the field."""

import dataclasses

import pytest

from configs import common, motif2_12b, tiny
from motif_jax import checkpoint
from motif_jax.model import ModelConfig, count_params, param_specs


def test_motif2_12b_numbers_match_recipe():
  cfg = ModelConfig.from_config_dict(motif2_12b.get_config().model)
  assert (cfg.num_layers, cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
          cfg.vocab_size) == (40, 4096, 16384, 40, 16, 128, 219520)
  assert (cfg.attention, cfg.mlp, cfg.tie_embeddings, cfg.rope_theta) == ("gda", "polynorm",
                                                                         False, 1e6)
  assert (cfg.num_groups, cfg.num_out_heads, cfg.value_dim) == (8, 32, 256)


def test_lambda_init_uses_motif_zero_based_convention():
  cfg = ModelConfig.from_config_dict(motif2_12b.get_config().model)
  # 0.8 - 0.6 exp(-0.3 (l - 1)) with 0-based l: l=1 gives exactly 0.2; l=0 is slightly negative
  # (a 1-based formula would give 0.2 at l=0 instead).
  assert cfg.lambda_init(1) == pytest.approx(0.2)
  assert cfg.lambda_init(0) == pytest.approx(0.8 - 0.6 * 1.3498588, abs=1e-6)  # e^0.3 = 1.3498588
  assert cfg.lambda_init(39) == pytest.approx(0.8 - 0.6 * 2.718281828 ** (-0.3 * 38))
  diff = dataclasses.replace(cfg, attention="diff", num_heads=32)
  assert diff.lambda_init(0) == pytest.approx(0.2)  # HF DiffLlama: 0.8 - 0.6 exp(-0.3 l)


@pytest.mark.parametrize("field,value,match", [
    ("num_heads", 41, r"model\.num_heads=41 must equal"),
    ("num_kv_heads", 15, r"model\.num_kv_heads=15 must be even"),
    ("head_dim", 0, r"model\.head_dim=0 must be a positive integer"),
    ("attention", "mla", r"model\.attention='mla' must be one of"),
    ("remat", "some", r"model\.remat='some' must be one of"),
    ("dtype", "float8", r"model\.dtype='float8' must be one of"),
    ("rms_norm_eps", 0.0, r"model\.rms_norm_eps=0.0 must be positive"),
    ("context_parallel", "tree", r"model\.context_parallel='tree' must be one of"),
])
def test_invalid_model_fields_are_named(field, value, match):
  config = motif2_12b.get_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=match):
    ModelConfig.from_config_dict(config.model)


def test_unknown_missing_and_sharding_fields_are_named():
  config = tiny.get_config().model.to_dict()
  with pytest.raises(ValueError, match=r"unknown model config fields: model\.n_layer"):
    ModelConfig.from_config_dict({**config, "n_layer": 3})
  del config["d_ff"]
  with pytest.raises(ValueError, match=r"missing model config fields: model\.d_ff"):
    ModelConfig.from_config_dict(config)
  config = tiny.get_config().model
  config.sharding.heads = "model"
  with pytest.raises(ValueError, match=r"model\.sharding: .*unknown mesh axis 'model'"):
    ModelConfig.from_config_dict(config)


def test_gqa_head_divisibility():
  config = tiny.get_config("gqa").model
  config.num_heads = 6
  with pytest.raises(ValueError, match=r"model\.num_heads=6 must be a multiple of "
                                       r"model\.num_kv_heads=4"):
    ModelConfig.from_config_dict(config)


def test_parse_arg_variants():
  args = common.parse_arg("smoke,seq=128", smoke=False, seq=65536)
  assert args.smoke is True and args.seq == 128
  with pytest.raises(ValueError, match="unknown config variant 'tiny'"):
    common.parse_arg("tiny", smoke=False)
  with pytest.raises(ValueError, match="needs a value"):
    common.parse_arg("seq", seq=1)


def _gda_polynorm_count(v, d, layers, n, k, h, f, ratio=4):
  """By hand: q [d, n·h], k and v [d, k·h], o [(n·r/(r+1))·2h, d], four λ [h], SubLN [2h],
  gate/up/down [d, f], PolyNorm 3 + 1, two norms [d]; untied embed + head, final norm."""
  per_layer = (d * n * h + 2 * d * k * h + n * ratio // (ratio + 1) * 2 * h * d + 4 * h + 2 * h
               + 3 * d * f + 4 + 2 * d)
  return layers * per_layer + 2 * v * d + d


def _gqa_swiglu_count(v, d, layers, n, k, h, f):
  return layers * (2 * d * n * h + 2 * d * k * h + 3 * d * f + 2 * d) + 2 * v * d + d


# (attention, mlp, layers, d_model, heads, kv heads, head_dim, d_ff, vocab, dtype, params)
VARIANTS = {
    (tiny, None): ("gda", "polynorm", 4, 256, 20, 8, 32, 512, 512, "float32",
                   _gda_polynorm_count(512, 256, 4, 20, 8, 32, 512)),  # 4,066,320: "4.07M"
    (tiny, "smoke"): ("gda", "polynorm", 2, 128, 20, 8, 32, 256, 512, "float32",
                      _gda_polynorm_count(512, 128, 2, 20, 8, 32, 256)),
    (tiny, "gqa"): ("gqa", "swiglu", 4, 256, 8, 4, 32, 512, 512, "float32",
                    _gqa_swiglu_count(512, 256, 4, 8, 4, 32, 512)),
    (motif2_12b, None): ("gda", "polynorm", 40, 4096, 40, 16, 128, 16384, 219520, "bfloat16",
                         12_703_860_896),
    (motif2_12b, "smoke"): ("gda", "polynorm", 2, 128, 40, 16, 16, 256, 1024, "float32",
                            _gda_polynorm_count(1024, 128, 2, 40, 16, 16, 256)),
}


@pytest.mark.parametrize("module,arg", list(VARIANTS), ids=lambda x: getattr(x, "__name__", x))
def test_every_variant_builds_the_model_it_names(module, arg):
  cfg = ModelConfig.from_config_dict(module.get_config(arg).model)
  got = (cfg.attention, cfg.mlp, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
         cfg.head_dim, cfg.d_ff, cfg.vocab_size, cfg.dtype, count_params(param_specs(cfg)))
  assert got == VARIANTS[module, arg]
  assert not cfg.tie_embeddings
  assert _gda_polynorm_count(219520, 4096, 40, 40, 16, 128, 16384) == 12_703_860_896


def test_saved_configs_without_a_newer_runtime_field_load_with_its_default():
  cfg = ModelConfig.from_config_dict(tiny.get_config().model)
  gather = dataclasses.replace(cfg, context_parallel="allgather", remat="full")
  assert checkpoint.config_from_json(checkpoint.config_to_json(gather)) == gather
  old = checkpoint.config_to_json(cfg).replace(f'  "context_parallel": "{cfg.context_parallel}",\n',
                                               "")
  assert "context_parallel" not in old
  assert checkpoint.config_from_json(old) == cfg
  # Runtime fields do not change what the weights are; architecture fields do.
  assert gather.architecture() == cfg.architecture()
  assert dataclasses.replace(cfg, d_ff=cfg.d_ff * 2).architecture() != cfg.architecture()
  missing_arch = checkpoint.config_to_json(cfg).replace('  "d_ff": %d,\n' % cfg.d_ff, "")
  with pytest.raises(ValueError, match=r"missing model config fields: model\.d_ff"):
    checkpoint.config_from_json(missing_arch)


@pytest.mark.parametrize("section,cls,edit,message", [
    ("fields", "FieldsConfig", ("prompt", ""), "fields.prompt must name an input field"),
    ("toy", "ToyConfig", ("ladder", "huge"), "toy.ladder='huge' must be one of"),
    ("template", "ChatTemplate", ("kind", "x"), "template.kind='x' must be one of"),
])
def test_section_errors_name_the_path_the_config_holds_it_at(section, cls, edit, message):
  """configs/evaluate.py holds the data sections at top level (`fields`, not `data.fields`): a
  section's own check names the path the user typed, not its usual one."""
  from configs import evaluate
  from motif_jax import typed_config
  from motif_jax.data import config as data_config, template
  config = evaluate.get_config()
  config[section][edit[0]] = edit[1]
  kind = getattr(data_config, cls, None) or getattr(template, cls)
  with pytest.raises(ValueError) as err:
    typed_config.build(kind, config[section], section)
  assert str(err.value).startswith(message), str(err.value)
  assert "data." not in str(err.value)
