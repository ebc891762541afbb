"""Hugging Face checkpoints <-> motif_jax params: Motif, Llama, Qwen2 and DiffLlama.

`load` never holds a whole checkpoint in host memory: every leaf is built with
`jax.make_array_from_callback`, whose callback reads, for one device's shard, only the per-layer
tensor slices that shard needs. `save` gathers one HF tensor at a time to host and streams it
into the safetensors files. Tensor names and config fields per family live in `layouts.py`.
Single-process only (`save` needs fully addressable arrays).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding

from motif_jax import checkpoint
from motif_jax.interop import layouts
from motif_jax.interop import safetensors_io as stio
from motif_jax.interop.layouts import TensorRule
from motif_jax.model.config import DTYPES, ModelConfig
from motif_jax.model.params import abstract_params, param_shardings, param_specs, validate_sharding
from motif_jax.sharding import ShardingRules

Params = dict[str, Any]
# Non-persistent buffers some older exports contain; they are recomputed, never loaded.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt",
                   "added_tokens.json",
                   "generation_config.json")  # not a tokenizer file, but its stop ids travel too


def _get_path(tree: Mapping, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _check_rules_cover(cfg: ModelConfig, rules: list[TensorRule]) -> None:
  leaves = {tuple(str(k.key) for k in path)
            for path, _ in jax.tree_util.tree_leaves_with_path(abstract_params(cfg))}
  if leaves != {r.path for r in rules}:
    raise AssertionError(f"layouts.tensor_rules out of sync with param_specs: "
                         f"{sorted(leaves ^ {r.path for r in rules})}")


def _hf_names(rule: TensorRule, num_layers: int) -> list[str]:
  return [rule.name.format(i) for i in range(num_layers)] if rule.stacked else [rule.name]


# Loading ------------------------------------------------------------------------------------------

def _validate_tensors(infos: Mapping[str, stio.TensorInfo], rules: list[TensorRule],
                      cfg: ModelConfig, path: Path) -> None:
  """Raise naming missing, mis-shaped and unexpected tensors before anything is read."""
  expected, abstract = {}, abstract_params(cfg)
  for rule in rules:
    shape = _get_path(abstract, rule.path).shape
    for name in _hf_names(rule, cfg.num_layers):
      expected[name] = rule.hf_shape(shape[1:] if rule.stacked else shape)
  missing = [n for n in expected if n not in infos]
  if missing:
    raise ValueError(f"{path}: missing tensor(s) {', '.join(missing[:10])}"
                     f"{f' (+{len(missing) - 10} more)' if len(missing) > 10 else ''}")
  for name, shape in expected.items():
    if infos[name].shape != shape:
      raise ValueError(f"{path}: tensor {name} has shape {list(infos[name].shape)}, expected "
                       f"{list(shape)} from config.json")
  ignored = {"lm_head.weight"} if cfg.tie_embeddings else set()  # tied: the embedding is used
  extra = sorted(n for n in infos if n not in expected and n not in ignored
                 and not n.endswith(IGNORED_SUFFIXES))
  if extra:
    raise ValueError(f"{path}: unexpected tensor(s) {', '.join(extra[:10])}"
                     f"{f' (+{len(extra) - 10} more)' if len(extra) > 10 else ''}; "
                     "the architecture has no place for them")


def _outer_range(index: tuple[slice, ...], dims: tuple[int, ...]):
  """Row-major flattening of `dims`: the flat range covering `index` exactly in the outermost dim
  (whole inner dims), the shape of that range, and the slices still to apply to it."""
  inner = int(np.prod(dims[1:], dtype=np.int64))
  s = index[0]
  return (slice(s.start * inner, s.stop * inner), (s.stop - s.start, *dims[1:]),
          (slice(None), *index[1:]))


def _read_layer(info: stio.TensorInfo, name: str, rule: TensorRule,
                layer_shape: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
  """`leaf_layer[index]`, reading only the rows/columns of the HF tensor that it needs."""
  if rule.kind == "same":
    return stio.read_slice(info, name, index)
  if rule.kind == "flat":
    rng, shape, rest = _outer_range(index, layer_shape)
    return stio.read_slice(info, name, (rng,)).reshape(shape)[rest]
  k = rule.split
  in_rng, in_shape, in_rest = _outer_range(index[:k], layer_shape[:k])
  out_rng, out_shape, out_rest = _outer_range(index[k:], layer_shape[k:])
  w_oi = stio.read_slice(info, name, (out_rng, in_rng))  # nn.Linear weight is [out, in]
  return w_oi.T.reshape(*in_shape, *out_shape)[(*in_rest, *out_rest)]


def _load_leaf(infos, rule: TensorRule, shape: tuple[int, ...], dtype, sharding) -> jax.Array:
  def callback(index):
    index = tuple(slice(*s.indices(n)) for s, n in zip(index, shape))
    if not rule.stacked:
      return _read_layer(infos[rule.name], rule.name, rule, shape, index).astype(dtype)
    layers = range(*index[0].indices(shape[0]))
    return np.stack([
        _read_layer(infos[rule.name.format(i)], rule.name.format(i), rule, shape[1:],
                    index[1:]).astype(dtype) for i in layers])
  return jax.make_array_from_callback(shape, sharding, callback, dtype=dtype)


def _checkpoint_dtype(hf: Mapping[str, Any]) -> str:
  name = str(hf.get("dtype") or hf.get("torch_dtype") or "float32").removeprefix("torch.")
  return name if name in DTYPES else "float32"


def load_config(path: str | Path, *, dtype: str | None = None,
                sharding: ShardingRules | None = None) -> ModelConfig:
  """`ModelConfig` from `config.json`; compute and storage dtype default to the checkpoint's."""
  hf = json.loads((Path(path) / "config.json").read_text())
  fields = layouts.family_for_hf(hf).model_config_fields(hf)
  dtype = dtype or _checkpoint_dtype(hf)
  return ModelConfig(**fields, dtype=dtype, param_dtype=dtype, sharding=sharding or ShardingRules())


def load(path: str | Path, *, mesh: Mesh | None = None, dtype: str | None = None,
         sharding: ShardingRules | None = None) -> tuple[ModelConfig, Params]:
  """Read an HF checkpoint directory into `(cfg, params)`, sharded on `mesh` as it is read.

  Args:
    dtype: storage and compute dtype (λ vectors and PolyNorm coefficients stay float32);
      default the checkpoint's `dtype`/`torch_dtype`.
    sharding: rules for placing the params on `mesh` (default `ShardingRules()`).
  """
  path = Path(path)
  cfg = load_config(path, dtype=dtype, sharding=sharding)
  rules = layouts.tensor_rules(cfg)
  _check_rules_cover(cfg, rules)
  infos = stio.index_checkpoint(path)
  _validate_tensors(infos, rules, cfg, path)
  abstract = abstract_params(cfg)
  if mesh is None:
    shardings = jax.tree.map(lambda _: SingleDeviceSharding(jax.devices()[0]), abstract)
  else:
    validate_sharding(cfg, dict(zip(mesh.axis_names, mesh.devices.shape)))
    shardings = param_shardings(cfg, mesh)
  params: Params = {}
  for rule in rules:
    leaf = _get_path(abstract, rule.path)
    _set_path(params, rule.path, _load_leaf(infos, rule, leaf.shape, leaf.dtype,
                                            _get_path(shardings, rule.path)))
  return cfg, params


# Saving -------------------------------------------------------------------------------------------

def _pending(rule: TensorRule, leaf: jax.Array, layer: int | None, dtype) -> stio.PendingTensor:
  layer_shape = leaf.shape[1:] if layer is not None else leaf.shape

  def produce():
    # One HF tensor to host at a time; a device-side slice first for stacked leaves.
    x = np.asarray(jax.device_get(leaf[layer] if layer is not None else leaf)).astype(dtype)
    if rule.kind == "flat":
      return x.reshape(-1)
    if rule.kind == "t":
      return x.reshape(int(np.prod(layer_shape[:rule.split])), -1).T
    return x

  name = rule.name.format(layer) if layer is not None else rule.name
  return stio.PendingTensor(name, rule.hf_shape(layer_shape), np.dtype(dtype), produce)


def save(path: str | Path, cfg: ModelConfig, params: Params, *,
         max_shard_bytes: int = 5 * 2**30, dtype: str | None = None) -> list[Path]:
  """Write `config.json` and safetensors (sharded beyond `max_shard_bytes`) for `cfg`'s family.

  Llama, Qwen2 and DiffLlama exports load with `transformers.AutoModelForCausalLM`; Motif exports
  use the released Motif layout (transformers needs Motif's remote code for those).

  Args:
    dtype: storage dtype of the tensors (default: each leaf's own); leaves declared float32
      (λ vectors, PolyNorm coefficients) stay float32.
  """
  family = layouts.family_for_config(cfg)
  rules = layouts.tensor_rules(cfg)
  _check_rules_cover(cfg, rules)
  specs, abstract = param_specs(cfg), abstract_params(cfg)
  dtype = jnp.dtype(dtype) if dtype is not None else None
  pending = []
  for rule in rules:
    leaf = _get_path(params, rule.path)
    want = _get_path(abstract, rule.path)
    if leaf.shape != want.shape:
      raise ValueError(f"params/{'/'.join(rule.path)} has shape {leaf.shape}, cfg implies "
                       f"{want.shape}")
    out_dtype = leaf.dtype if dtype is None or _get_path(specs, rule.path).dtype else dtype
    layers = range(cfg.num_layers) if rule.stacked else [None]
    pending += [_pending(rule, leaf, i, out_dtype) for i in layers]
  path = Path(path)
  files = stio.write_checkpoint(path, pending, max_shard_bytes)
  hf_config = family.hf_config(cfg)
  torch_dtype = dtype.name if dtype is not None else cfg.param_dtype
  hf_config.update(dtype=torch_dtype, torch_dtype=torch_dtype)
  (path / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
  return files


# Tokenizer ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TokenizerFiles:
  tokenizer_json: Path | None
  chat_template: str | None


def find_tokenizer(path: str | Path) -> TokenizerFiles:
  """tokenizer.json and the chat template (chat_template.jinja, else tokenizer_config.json)."""
  path = Path(path)
  tokenizer_json = path / "tokenizer.json"
  template = None
  if (path / "chat_template.jinja").exists():
    template = (path / "chat_template.jinja").read_text()
  elif (path / "tokenizer_config.json").exists():
    template = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
    if isinstance(template, list):  # several named templates: take "default"
      template = next((t["template"] for t in template if t.get("name") == "default"), None)
  return TokenizerFiles(tokenizer_json if tokenizer_json.exists() else None, template)


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
  """Copy the tokenizer files present in `src` to `dst`; returns their names."""
  src, dst = Path(src), Path(dst)
  dst.mkdir(parents=True, exist_ok=True)
  copied = [name for name in TOKENIZER_FILES if (src / name).is_file()]
  for name in copied:
    shutil.copyfile(src / name, dst / name)
  return copied


# Workdir conversions (the convert CLI) ------------------------------------------------------------

def import_checkpoint(hf_dir: str | Path, workdir: str | Path, *,
                      mesh: Mesh | None = None) -> tuple[ModelConfig, Params]:
  """HF directory -> `<workdir>/params` (Orbax), `model_config.json` and tokenizer files."""
  cfg, params = load(hf_dir, mesh=mesh)
  checkpoint.save_params(workdir, cfg, params)
  copy_tokenizer_files(hf_dir, workdir)
  return cfg, params


def _params_dir(workdir: Path) -> Path:
  """A params directory, or a training run's workdir (its final/ params)."""
  final = workdir / "final"
  return final if (final / checkpoint.CONFIG_FILE).exists() else workdir


def tokenizer_source(workdir: str | Path) -> Path | None:
  """Where a workdir's tokenizer files are: the workdir itself (an import), else the directory
  the run's config.json trained with (data.template.path for kind=hf, else data.tokenizer's)."""
  workdir = Path(workdir)
  if any((workdir / name).is_file() for name in TOKENIZER_FILES):
    return workdir
  for run_dir in (workdir, workdir.parent):  # a run workdir, or its final/
    if (run_dir / "config.json").exists():
      data = json.loads((run_dir / "config.json").read_text()).get("data")
      if not isinstance(data, dict):
        continue
      template = data.get("template") or {}
      if template.get("kind") == "hf" and template.get("path"):
        return Path(template["path"])
      if data.get("tokenizer"):
        return Path(data["tokenizer"]).parent
  return None


def export_checkpoint(workdir: str | Path, hf_dir: str | Path, *, mesh: Mesh | None = None,
                      max_shard_bytes: int = 5 * 2**30,
                      tokenizer_from: str | Path | None = None) -> tuple[ModelConfig, Params]:
  """`<workdir>` Orbax params (or a training run's final/) -> HF directory (config, safetensors,
  and the tokenizer files of `tokenizer_from`, default `tokenizer_source(workdir)`)."""
  workdir = Path(workdir)
  cfg, params = checkpoint.restore_params(_params_dir(workdir), mesh=mesh)
  save(hf_dir, cfg, params, max_shard_bytes=max_shard_bytes)
  source = tokenizer_from or tokenizer_source(workdir)
  if source is not None:
    copy_tokenizer_files(source, hf_dir)
  return cfg, params
