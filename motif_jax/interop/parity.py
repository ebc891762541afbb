"""Logit parity between our forward pass and `transformers` on fixed probe sequences, in fp32.

Figures: the max absolute logit difference and the mean over positions of KL(HF || ours).
`transformers` and `torch` are optional (dev extra); without them, or for a family transformers
cannot load (Motif needs its remote modeling code), `HFUnavailable` says why.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from motif_jax.model.config import ModelConfig
from motif_jax.model.transformer import forward_logits

NUM_PROBES, PROBE_LEN = 3, 16


class HFUnavailable(RuntimeError):
  """transformers is missing or cannot load this checkpoint's family."""


@dataclasses.dataclass(frozen=True)
class Parity:
  max_abs_diff: float
  mean_kl: float  # KL(HF || ours), nats, averaged over positions

  def __str__(self) -> str:
    return f"max |Δlogit| = {self.max_abs_diff:.3e}, mean KL(HF||ours) = {self.mean_kl:.3e}"


def probe_tokens(vocab_size: int, *, num: int = NUM_PROBES, length: int = PROBE_LEN,
                 seed: int = 0) -> np.ndarray:
  """Fixed pseudo-random token ids [num, length]."""
  return np.random.default_rng(seed).integers(0, vocab_size, (num, length), dtype=np.int64)


def compare_logits(ref_btv: np.ndarray, ours_btv: np.ndarray) -> Parity:
  """Max |Δ| and mean KL(ref || ours), computed in float64."""
  ref, ours = np.asarray(ref_btv, np.float64), np.asarray(ours_btv, np.float64)
  if ref.shape != ours.shape:
    raise ValueError(f"logit shapes differ: reference {ref.shape}, ours {ours.shape}")

  def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  log_p, log_q = log_softmax(ref), log_softmax(ours)
  kl_bt = (np.exp(log_p) * (log_p - log_q)).sum(-1)
  return Parity(float(np.abs(ref - ours).max()), float(kl_bt.mean()))


def our_logits(cfg: ModelConfig, params: Any, tokens_bt: np.ndarray) -> np.ndarray:
  """float32 logits with params upcast to float32."""
  cfg32 = dataclasses.replace(cfg, dtype="float32", param_dtype="float32")
  params32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
  return np.asarray(forward_logits(params32, jnp.asarray(tokens_bt, jnp.int32), cfg32))


def hf_logits(hf_dir: str | Path, tokens_bt: np.ndarray) -> np.ndarray:
  """float32 logits from `transformers.AutoModelForCausalLM` (eager attention)."""
  archs = json.loads((Path(hf_dir) / "config.json").read_text()).get("architectures") or []
  if "MotifForCausalLM" in archs:
    raise HFUnavailable("transformers has no built-in MotifForCausalLM (it needs Motif's remote "
                        "modeling code); no parity check against transformers for Motif")
  try:
    import torch
    import transformers
  except ImportError as e:
    raise HFUnavailable(f"transformers/torch not importable: {e}") from e
  try:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(hf_dir), dtype=torch.float32, attn_implementation="eager")
  except (ValueError, KeyError, OSError) as e:
    raise HFUnavailable(f"transformers cannot load {archs}: {e}") from e
  with torch.no_grad():
    return model(torch.as_tensor(tokens_bt)).logits.float().numpy()


def check(hf_dir: str | Path, cfg: ModelConfig, params: Any) -> Parity:
  """Parity of `params` against the HF checkpoint in `hf_dir`; raises `HFUnavailable`."""
  tokens_bt = probe_tokens(cfg.vocab_size)
  return compare_logits(hf_logits(hf_dir, tokens_bt), our_logits(cfg, params, tokens_bt))


def report(hf_dir: str | Path, cfg: ModelConfig, params: Any) -> str:
  """One line for the convert CLI: the parity figures, or why there are none."""
  probes = f"fp32, {NUM_PROBES} probes x {PROBE_LEN} tokens"
  try:
    return f"parity vs transformers ({probes}): {check(hf_dir, cfg, params)}"
  except HFUnavailable as e:
    return f"parity vs transformers: not available: {e}"
