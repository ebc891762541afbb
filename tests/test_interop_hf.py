"""Hugging Face interop: logit parity with transformers both ways, sharded streaming loads,
bit-exact Motif round trips (sharded files, bf16), clear errors, tokenizer files, convert CLI."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from configs import tiny
from motif_jax import checkpoint
from motif_jax.interop import hf, parity
from motif_jax.interop import safetensors_io as stio
from motif_jax.model import ModelConfig, abstract_params, param_shardings
from motif_jax.sharding import ShardingRules, make_mesh

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MAX_ABS_DIFF, MAX_KL = 1e-4, 1e-6
# initializer_range 0.2 (not 0.02) so logits are far from uniform and parity means something.
HF_COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 initializer_range=0.2, rms_norm_eps=1e-5)
HF_FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(attention_bias=True, rope_theta=5e4)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "diffllama": ("DiffLlamaConfig", "DiffLlamaForCausalLM", dict(head_dim=8)),
}
# Our configs for export, one per family; equal to the imported ones (asserted), so the two
# tests share compiled forward passes.
OURS = dict(vocab_size=128, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
            d_ff=96, rms_norm_eps=1e-5, attn_rms_norm_eps=1e-5, init_std=0.2, max_seq_len=256)
EXPORTS = {
    "llama": dict(OURS, qkv_bias=True, o_bias=True, rope_theta=5e4),
    "qwen2": dict(OURS, qkv_bias=True, tie_embeddings=True),
    "diffllama": dict(OURS, attention="diff", head_dim=8),
}
SMALL_NONZERO = ("bq", "bk", "bv", "bo", "poly_w", "poly_b", "lambda_q1", "lambda_k1", "lambda_q2",
                 "lambda_k2")


def _tiny_hf_model(family: str, directory, seed: int = 0):
  """A tiny random HF model, with biases, norms and λs moved away from their 0/1 init."""
  config_cls, model_cls, extra = HF_FAMILIES[family]
  torch.manual_seed(seed)
  model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**HF_COMMON, **extra))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if any(k in name for k in ("bias", "norm", "lambda")):
        p.add_(0.3 * torch.randn_like(p))
  model.save_pretrained(directory)
  return directory


def _random_params(cfg: ModelConfig, seed: int = 0):
  """Random params with `cfg`'s shapes and dtypes, built in numpy (init_params would cost a
  multi-second compile per config). Norm gains sit near 1, biases, λs and PolyNorm coefficients
  are O(0.3): none is trivially 1 or 0."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = str(path[-1].key)
    x = rng.standard_normal(a.shape, np.float32)
    if name.endswith("norm") or name == "subln":
      x = 1 + 0.3 * x
    elif name in SMALL_NONZERO:
      x = 0.3 * x
    else:
      x = cfg.init_std * x
    return jnp.asarray(x, a.dtype)
  return jax.tree_util.tree_map_with_path(leaf, abstract_params(cfg))


def _assert_parity(p: parity.Parity):
  assert p.max_abs_diff <= MAX_ABS_DIFF, p
  assert p.mean_kl <= MAX_KL, p


def _assert_trees_bit_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  return {f: _tiny_hf_model(f, root / f) for f in HF_FAMILIES}


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_import_matches_transformers(hf_dirs, family):
  cfg, params = hf.load(hf_dirs[family])
  assert cfg == ModelConfig(**EXPORTS[family])
  _assert_parity(parity.check(hf_dirs[family], cfg, params))


@pytest.mark.parametrize("family", sorted(EXPORTS))
def test_export_loads_in_transformers(tmp_path, family):
  cfg = ModelConfig(**EXPORTS[family])
  params = _random_params(cfg)
  # Llama also goes through the sharded layout (index json + several files).
  max_shard_bytes = 40_000 if family == "llama" else 5 * 2**30
  files = hf.save(tmp_path, cfg, params, max_shard_bytes=max_shard_bytes)
  assert (len(files) > 1) == (family == "llama")
  assert (tmp_path / stio.INDEX_FILE).exists() == (family == "llama")
  assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [
      HF_FAMILIES[family][1]]
  _assert_parity(parity.check(tmp_path, cfg, params))


@pytest.mark.parametrize("rules", [
    ShardingRules(),
    # head_dim and the stacked layer axis sharded too: partial reads inside flattened HF dims.
    ShardingRules(layers="fsdp", embed=None, heads=None, kv_heads=None, head_dim="tensor"),
])
def test_load_on_mesh_matches_single_device(hf_dirs, tmp_path, rules):
  mesh = make_mesh({"fsdp": 2, "tensor": 2}, jax.devices()[:4])
  cfg, params = hf.load(hf_dirs["qwen2"])
  cfg_mesh, params_mesh = hf.load(hf_dirs["qwen2"], mesh=mesh, sharding=rules)
  assert dataclasses.replace(cfg_mesh, sharding=cfg.sharding) == cfg
  _assert_trees_bit_equal(params, params_mesh)
  expected = param_shardings(cfg_mesh, mesh)
  for (path, x), s in zip(jax.tree_util.tree_leaves_with_path(params_mesh),
                          jax.tree.leaves(expected)):
    assert x.sharding.is_equivalent_to(s, x.ndim), jax.tree_util.keystr(path)
  # Saving from sharded params writes the same tensors as saving from one device.
  hf.save(tmp_path / "single", cfg, params)
  hf.save(tmp_path / "mesh", cfg_mesh, params_mesh)
  single, sharded = (load_file(tmp_path / d / stio.SINGLE_FILE) for d in ("single", "mesh"))
  assert single.keys() == sharded.keys()
  assert all(np.array_equal(single[k], sharded[k]) for k in single)


def test_load_bf16_checkpoint_from_transformers(hf_dirs, tmp_path):
  model = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs["llama"])
  model.to(torch.bfloat16).save_pretrained(tmp_path)
  assert stio.index_checkpoint(tmp_path)["model.embed_tokens.weight"].dtype == "BF16"
  cfg, params = hf.load(tmp_path)
  assert (cfg.dtype, cfg.param_dtype) == ("bfloat16", "bfloat16")
  # torch and ml_dtypes both round to nearest even: the same bits as casting our fp32 load.
  _, params32 = hf.load(hf_dirs["llama"])
  _assert_trees_bit_equal(jax.tree.map(lambda x: x.astype(jnp.bfloat16), params32), params)


def _motif_config(param_dtype: str) -> ModelConfig:
  model = tiny.get_config("smoke").model
  model.param_dtype = param_dtype
  return ModelConfig.from_config_dict(model)


@pytest.mark.parametrize("param_dtype,max_shard_bytes", [("float32", 5 * 2**30),
                                                         ("bfloat16", 300_000)])
def test_motif_round_trip_is_bit_exact(tmp_path, param_dtype, max_shard_bytes):
  cfg = _motif_config(param_dtype)
  params = _random_params(cfg)
  files = hf.save(tmp_path, cfg, params, max_shard_bytes=max_shard_bytes)
  assert (len(files) > 1) == (param_dtype == "bfloat16")
  hf_config = json.loads((tmp_path / "config.json").read_text())
  assert hf_config["architectures"] == ["MotifForCausalLM"]
  assert (hf_config["num_noise_heads"], hf_config["hidden_act"]) == (cfg.num_groups, "poly_norm")
  infos = stio.index_checkpoint(tmp_path)  # the released layout (recipe §1.2)
  h = cfg.head_dim
  assert infos["model.layers.1.self_attn.o_proj.weight"].shape == (
      cfg.d_model, cfg.num_groups * cfg.gda_ratio * 2 * h)
  assert infos["model.layers.1.self_attn.subln.weight"].shape == (2 * h,)
  assert infos["model.layers.1.mlp.act_fn.weight"].shape == (3,)
  assert infos["model.layers.1.self_attn.lambda_q1"].dtype == "F32"
  assert infos["model.layers.1.self_attn.q_proj.weight"].dtype == (
      "BF16" if param_dtype == "bfloat16" else "F32")

  loaded_cfg, loaded = hf.load(tmp_path)
  # λ init std and scan_unroll are training-only and not in config.json; the compute dtype
  # follows the storage.
  assert dataclasses.replace(loaded_cfg, dtype=cfg.dtype, lambda_std=cfg.lambda_std,
                             scan_unroll=cfg.scan_unroll) == cfg
  _assert_trees_bit_equal(params, loaded)
  assert "not available" in parity.report(tmp_path, loaded_cfg, loaded)
  assert "MotifForCausalLM" in parity.report(tmp_path, loaded_cfg, loaded)


def _copy_with_tensors(src, dst, edit):
  shutil.copytree(src, dst)
  tensors = load_file(dst / stio.SINGLE_FILE)
  edit(tensors)
  save_file(tensors, dst / stio.SINGLE_FILE, metadata={"format": "pt"})
  return dst


def _copy_with_config(src, dst, **changes):
  shutil.copytree(src, dst)
  config = json.loads((dst / "config.json").read_text())
  config.update(changes)
  (dst / "config.json").write_text(json.dumps(config))
  return dst


def test_errors_name_the_problem(hf_dirs, tmp_path):
  src = hf_dirs["llama"]
  with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*supported: MotifForCausalLM"):
    hf.load(_copy_with_config(src, tmp_path / "arch", architectures=["GPT2LMHeadModel"]))
  with pytest.raises(ValueError, match="llama3"):
    hf.load(_copy_with_config(src, tmp_path / "rope", rope_parameters={
        "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}))
  with pytest.raises(ValueError, match="mlp_bias"):
    hf.load(_copy_with_config(src, tmp_path / "mlp_bias", mlp_bias=True))

  name = "model.layers.1.self_attn.k_proj.weight"
  with pytest.raises(ValueError, match=rf"missing tensor\(s\) {name}"):
    hf.load(_copy_with_tensors(src, tmp_path / "missing", lambda t: t.pop(name)))

  def reshape(t):
    t[name] = np.zeros((8, 64), np.float32)
  with pytest.raises(ValueError, match=rf"{name} has shape \[8, 64\], expected \[32, 64\]"):
    hf.load(_copy_with_tensors(src, tmp_path / "shape", reshape))

  def add(t):
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(8, np.float32)  # ignored
    t["model.layers.0.mlp.gate_proj.bias"] = np.ones(96, np.float32)
  extra = r"unexpected tensor\(s\) model.layers.0.mlp.gate_proj.bias;"  # inv_freq not listed
  with pytest.raises(ValueError, match=extra):
    hf.load(_copy_with_tensors(src, tmp_path / "extra", add))

  with pytest.raises(ValueError, match="no Hugging Face family"):
    hf.save(tmp_path / "out", ModelConfig(**OURS, mlp="polynorm"), {})


def test_find_tokenizer(tmp_path):
  from tokenizers import Tokenizer, models
  Tokenizer(models.WordLevel({"<unk>": 0, "hi": 1}, unk_token="<unk>")).save(
      str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ a }}"}))
  assert hf.find_tokenizer(tmp_path) == hf.TokenizerFiles(tmp_path / "tokenizer.json", "{{ a }}")
  (tmp_path / "chat_template.jinja").write_text("{{ b }}")  # the newer file wins
  assert hf.find_tokenizer(tmp_path).chat_template == "{{ b }}"
  assert hf.find_tokenizer(tmp_path / "nothing") == hf.TokenizerFiles(None, None)


def _run_convert(capsys, *args) -> str:
  from experiments import convert
  argv = ["convert", *args]
  convert.FLAGS(argv)
  try:
    convert.main(argv[:1])
  finally:
    convert.FLAGS.unparse_flags()
  return capsys.readouterr().out


def _figures(out: str) -> parity.Parity:
  line = next(l for l in out.splitlines() if l.startswith("parity vs transformers ("))
  diff, kl = (float(part.split("=")[1]) for part in line.split(": ", 1)[1].split(", "))
  return parity.Parity(diff, kl)


def test_convert_cli_round_trip(hf_dirs, tmp_path, capsys):
  src = shutil.copytree(hf_dirs["diffllama"], tmp_path / "src")
  (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
  work, out = tmp_path / "work", tmp_path / "out"

  printed = _run_convert(capsys, f"--from_hf={src}", f"--workdir={work}", "--check")
  _assert_parity(_figures(printed))
  assert (work / "params").is_dir() and (work / "model_config.json").exists()
  assert hf.find_tokenizer(work).chat_template == "{{ x }}"

  printed = _run_convert(capsys, f"--workdir={work}", f"--to_hf={out}", "--check")
  _assert_parity(_figures(printed))
  assert (out / stio.SINGLE_FILE).exists() and (out / "tokenizer_config.json").exists()
  assert load_file(src / stio.SINGLE_FILE).keys() == load_file(out / stio.SINGLE_FILE).keys()

  mesh = make_mesh({"fsdp": 2, "tensor": 2}, jax.devices()[:4])
  cfg, restored = checkpoint.restore_params(work, mesh=mesh)
  _assert_trees_bit_equal(hf.load(src)[1], restored)
  for x, s in zip(jax.tree.leaves(restored), jax.tree.leaves(param_shardings(cfg, mesh))):
    assert x.sharding.is_equivalent_to(s, x.ndim)
