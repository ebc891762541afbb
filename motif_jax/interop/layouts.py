"""Per-family tables: Hugging Face `config.json` <-> `ModelConfig`, and HF tensor names per leaf.

All four families share Llama's tensor names (`model.layers.{i}.self_attn.q_proj.weight`, ...);
they differ in config fields and in which optional tensors exist (biases, λ vectors, SubLN,
PolyNorm). Motif's field names follow the official vLLM fork (`MotifTechnologies/vllm`,
`vllm/model_executor/models/motif.py` at 477e4d7): `num_noise_heads` (one noise head per group,
so gda_ratio = (num_attention_heads − num_noise_heads) / num_noise_heads), `attn_rms_norm_eps`
(SubLN), `hidden_act="poly_norm"`, `head_dim` (required with `num_noise_heads`), and biases from
`attention_bias`/`use_bias` (o_proj) overridden by `qkv_bias` for q/k/v. `model_type` "Motif"
follows the fork's `MotifConfig`. λ_init is not a tensor; `ModelConfig.lambda_init` computes it.

Tensor kinds say how one layer's slice of a leaf maps to its HF tensor:
  same: identical shape (embeddings, norms, λ vectors, PolyNorm coefficients)
  flat: HF stores the leaf flattened (q/k/v biases [n*h] -> [n, h])
  t:    an nn.Linear weight [out, in]; the leaf is W.T reshaped, with its first `split` dims
        forming `in` (wq [d, n, h]: split 1; wo [n_out, h_v, d]: split 2)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from motif_jax.model.config import ModelConfig

LAYER = "model.layers.{}."


@dataclasses.dataclass(frozen=True)
class TensorRule:
  """One parameter leaf and the HF tensor(s) it comes from (one per layer when stacked)."""

  path: tuple[str, ...]  # keys into our param tree
  name: str  # HF tensor name; "{}" stands for the layer index of stacked leaves
  kind: str = "same"  # same | flat | t
  split: int = 1  # kind t: leading leaf dims that form the Linear's input axis

  @property
  def stacked(self) -> bool:
    return self.path[0] == "layers"

  def hf_shape(self, layer_shape: tuple[int, ...]) -> tuple[int, ...]:
    if self.kind == "same":
      return tuple(layer_shape)
    if self.kind == "flat":
      return (math.prod(layer_shape),)
    return (math.prod(layer_shape[self.split:]), math.prod(layer_shape[:self.split]))


def tensor_rules(cfg: ModelConfig) -> list[TensorRule]:
  """Every leaf of `param_specs(cfg)` with its HF tensor name and layout."""
  def attn(key, hf, kind="same", split=1):
    return TensorRule(("layers", "attn", key), LAYER + "self_attn." + hf, kind, split)

  def mlp(key, hf, kind="same"):
    return TensorRule(("layers", "mlp", key), LAYER + "mlp." + hf, kind)

  rules = [
      TensorRule(("embed",), "model.embed_tokens.weight"),
      TensorRule(("final_norm",), "model.norm.weight"),
      TensorRule(("layers", "attn_norm"), LAYER + "input_layernorm.weight"),
      TensorRule(("layers", "mlp_norm"), LAYER + "post_attention_layernorm.weight"),
      attn("wq", "q_proj.weight", "t"),
      attn("wk", "k_proj.weight", "t"),
      attn("wv", "v_proj.weight", "t"),
      attn("wo", "o_proj.weight", "t", split=2),
      mlp("w_gate", "gate_proj.weight", "t"),
      mlp("w_up", "up_proj.weight", "t"),
      mlp("w_down", "down_proj.weight", "t"),
  ]
  if not cfg.tie_embeddings:
    rules.append(TensorRule(("unembed",), "lm_head.weight", "t"))
  if cfg.qkv_bias:
    rules += [attn(f"b{x}", f"{x}_proj.bias", "flat") for x in "qkv"]
  if cfg.o_bias:
    rules.append(attn("bo", "o_proj.bias"))
  if cfg.attention in ("diff", "gda"):
    rules += [attn(f"lambda_{x}", f"lambda_{x}") for x in ("q1", "k1", "q2", "k2")]
  if cfg.attention == "gda":
    rules.append(attn("subln", "subln.weight"))
  if cfg.mlp == "polynorm":
    rules += [mlp("poly_w", "act_fn.weight"), mlp("poly_b", "act_fn.bias")]
  return rules


# config.json -------------------------------------------------------------------------------------

def _get(hf: Mapping[str, Any], key: str) -> Any:
  if hf.get(key) is None:
    raise ValueError(f"config.json: required field {key!r} is missing")
  return hf[key]


def rope_theta(hf: Mapping[str, Any], default: float) -> float:
  """RoPE base from `rope_parameters` (transformers 5) or top-level `rope_theta` (4.x).

  Any rope type other than the default (linear, dynamic, yarn, llama3, ...) raises.
  """
  theta = hf.get("rope_theta")
  for key in ("rope_parameters", "rope_scaling"):
    params = hf.get(key) or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
      raise ValueError(f"config.json: {key} has rope type {kind!r}; only the default RoPE "
                       "(no scaling) is supported")
    theta = params.get("rope_theta", theta)
  return float(default if theta is None else theta)


def _check_supported(hf: Mapping[str, Any], arch: str, allowed: Mapping[str, Any]) -> None:
  for key, value in allowed.items():
    got = hf.get(key)
    if got is not None and got != value:
      raise ValueError(f"config.json: {key}={got!r} is not supported for {arch} "
                       f"(motif_jax only represents {key}={value!r})")


def _common_from_hf(hf: Mapping[str, Any], rope_default: float) -> dict[str, Any]:
  d, n = _get(hf, "hidden_size"), _get(hf, "num_attention_heads")
  return dict(
      vocab_size=_get(hf, "vocab_size"), d_model=d, num_layers=_get(hf, "num_hidden_layers"),
      num_heads=n, num_kv_heads=hf.get("num_key_value_heads") or n,
      head_dim=hf.get("head_dim") or d // n, d_ff=_get(hf, "intermediate_size"),
      rope_theta=rope_theta(hf, rope_default), rms_norm_eps=float(_get(hf, "rms_norm_eps")),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_seq_len=_get(hf, "max_position_embeddings"),
      init_std=float(hf.get("initializer_range", 0.02)))


def _common_to_hf(cfg: ModelConfig, family: "Family") -> dict[str, Any]:
  return dict(
      architectures=[family.architecture], model_type=family.model_type,
      vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
      hidden_act=family.hidden_act, max_position_embeddings=cfg.max_seq_len,
      rms_norm_eps=cfg.rms_norm_eps, initializer_range=cfg.init_std,
      tie_word_embeddings=cfg.tie_embeddings, attention_dropout=0.0, use_cache=True,
      # Both spellings: transformers 4.x reads rope_theta, 5.x reads rope_parameters.
      rope_theta=cfg.rope_theta,
      rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})


def _llama_from_hf(hf):
  bias = bool(hf.get("attention_bias", False))  # Llama's flag covers q, k, v and o
  return dict(_common_from_hf(hf, 10_000.0), qkv_bias=bias, o_bias=bias)


def _llama_to_hf(cfg):
  return dict(attention_bias=cfg.qkv_bias, mlp_bias=False)


def _qwen2_from_hf(hf):
  layer_types = set(hf.get("layer_types") or ["full_attention"])
  if layer_types != {"full_attention"}:
    raise ValueError(f"config.json: layer_types {sorted(layer_types)} are not supported for "
                     "Qwen2ForCausalLM (only full_attention)")
  return dict(_common_from_hf(hf, 10_000.0), qkv_bias=True, o_bias=False)


def _qwen2_to_hf(cfg):
  del cfg
  return dict(use_sliding_window=False)


def _diffllama_from_hf(hf):
  bias = bool(hf.get("attention_bias", False))
  fields = _common_from_hf(hf, 10_000.0)
  # DiffLlama's group norm has no weight and uses rms_norm_eps.
  return dict(fields, attention="diff", qkv_bias=bias, o_bias=bias,
              attn_rms_norm_eps=fields["rms_norm_eps"],
              lambda_std=float(hf.get("lambda_std_dev", 0.1)))


def _diffllama_to_hf(cfg):
  return dict(attention_bias=cfg.qkv_bias, lambda_std_dev=cfg.lambda_std)


def _motif_from_hf(hf):
  n, k = _get(hf, "num_attention_heads"), hf.get("num_key_value_heads") or hf["num_attention_heads"]
  if hf.get("num_noise_heads") is None:
    raise ValueError("config.json: MotifForCausalLM without num_noise_heads (Motif-2.6B-style "
                     "non-grouped differential attention) is not supported")
  noise = hf["num_noise_heads"]
  if noise < 1 or n % noise or 2 * noise != k:
    raise ValueError(f"config.json: num_noise_heads={noise} with num_attention_heads={n}, "
                     f"num_key_value_heads={k}: grouped differential attention needs one noise "
                     "head and one K1/V1 + K2/V2 pair per group (num_key_value_heads = "
                     "2 * num_noise_heads, num_attention_heads a multiple of num_noise_heads)")
  _get(hf, "head_dim")  # vLLM requires it whenever num_noise_heads is set
  o_bias = bool(hf.get("attention_bias", False) or hf.get("use_bias", False))
  qkv_bias = bool(hf["qkv_bias"]) if "qkv_bias" in hf else o_bias
  return dict(_common_from_hf(hf, 1_000_000.0), attention="gda", mlp="polynorm",
              gda_ratio=(n - noise) // noise, qkv_bias=qkv_bias, o_bias=o_bias,
              attn_rms_norm_eps=float(_get(hf, "attn_rms_norm_eps")), polynorm_eps=1e-6)


def _motif_to_hf(cfg):
  return dict(num_noise_heads=cfg.num_groups, attn_rms_norm_eps=cfg.attn_rms_norm_eps,
              k_ratio=1, attention_bias=cfg.o_bias, qkv_bias=cfg.qkv_bias, use_bias=False,
              rope_scaling=None)


@dataclasses.dataclass(frozen=True)
class Family:
  architecture: str
  model_type: str
  hidden_act: str
  from_hf: Callable[[Mapping[str, Any]], dict[str, Any]]  # config.json -> ModelConfig fields
  to_hf: Callable[[ModelConfig], dict[str, Any]]  # family-specific config.json fields
  unsupported: Mapping[str, Any]  # config.json fields we can only represent at this value

  def model_config_fields(self, hf: Mapping[str, Any]) -> dict[str, Any]:
    _check_supported(hf, self.architecture, dict(self.unsupported, hidden_act=self.hidden_act,
                                                 partial_rotary_factor=1.0))
    return self.from_hf(hf)

  def hf_config(self, cfg: ModelConfig) -> dict[str, Any]:
    return dict(_common_to_hf(cfg, self), **self.to_hf(cfg))


MOTIF = Family("MotifForCausalLM", "Motif", "poly_norm", _motif_from_hf, _motif_to_hf, dict(
    k_ratio=1, use_bias=False, num_experts=0, mhc_enabled=False, q_lora_rank=0, kv_lora_rank=0,
    diff_v2=False, use_sliding_window=False, headwise_attn_output_gate=False,
    elementwise_attn_output_gate=False, polynorm_output_scale=1.0, num_nextn_predict_layers=0))
LLAMA = Family("LlamaForCausalLM", "llama", "silu", _llama_from_hf, _llama_to_hf,
               dict(mlp_bias=False))
QWEN2 = Family("Qwen2ForCausalLM", "qwen2", "silu", _qwen2_from_hf, _qwen2_to_hf,
               dict(use_sliding_window=False))
DIFFLLAMA = Family("DiffLlamaForCausalLM", "diffllama", "silu", _diffllama_from_hf,
                   _diffllama_to_hf, {})
FAMILIES = {f.architecture: f for f in (MOTIF, LLAMA, QWEN2, DIFFLLAMA)}


def family_for_hf(hf: Mapping[str, Any]) -> Family:
  archs = hf.get("architectures") or []
  if len(archs) != 1 or archs[0] not in FAMILIES:
    raise ValueError(f"config.json: architectures={archs!r} is not supported; supported: "
                     f"{', '.join(FAMILIES)}")
  return FAMILIES[archs[0]]


def family_for_config(cfg: ModelConfig) -> Family:
  """The HF family that represents `cfg` exactly; raises naming what none can represent."""
  if cfg.attention == "gda" and cfg.mlp == "polynorm":
    if cfg.polynorm_eps != 1e-6:
      raise ValueError(f"model.polynorm_eps={cfg.polynorm_eps}: MotifForCausalLM's PolyNorm has "
                       "a fixed eps of 1e-6")
    return MOTIF
  if cfg.mlp != "swiglu" or cfg.attention == "gda":
    raise ValueError(f"no Hugging Face family has attention={cfg.attention!r} with "
                     f"mlp={cfg.mlp!r} (Motif is gda+polynorm; Llama, Qwen2, DiffLlama use swiglu)")
  if cfg.attention == "diff":
    if cfg.qkv_bias != cfg.o_bias:
      raise ValueError(f"model.qkv_bias={cfg.qkv_bias}, model.o_bias={cfg.o_bias}: DiffLlama's "
                       "attention_bias sets all four projection biases together")
    if cfg.attn_rms_norm_eps != cfg.rms_norm_eps:
      raise ValueError(f"model.attn_rms_norm_eps={cfg.attn_rms_norm_eps} differs from "
                       f"model.rms_norm_eps={cfg.rms_norm_eps}: DiffLlama's group norm uses "
                       "rms_norm_eps")
    return DIFFLLAMA
  if cfg.qkv_bias and not cfg.o_bias:
    return QWEN2
  if cfg.qkv_bias == cfg.o_bias:
    return LLAMA
  raise ValueError("model.o_bias=True with model.qkv_bias=False: no Hugging Face family has an "
                   "output-projection bias without q/k/v biases")
