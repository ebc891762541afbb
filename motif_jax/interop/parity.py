"""Logit parity between our forward pass and `transformers` on fixed probe sequences, in fp32,
and greedy-generation parity between our sampler and `transformers`' `generate`.

Figures: the max absolute logit difference and the mean over positions of KL(HF || ours); for
generation, both greedy token sequences and the smallest top-1/top-2 logit gap transformers saw
(how far the argmax was from a tie, i.e. how meaningful equal tokens are).
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


def load_hf_model(hf_dir: str | Path):
  """`transformers.AutoModelForCausalLM` in float32 with eager attention; raises HFUnavailable."""
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
  return model


def hf_logits(hf_dir: str | Path, tokens_bt: np.ndarray) -> np.ndarray:
  """float32 logits from `transformers.AutoModelForCausalLM` (eager attention)."""
  model = load_hf_model(hf_dir)
  import torch  # noqa: PLC0415 (load_hf_model checked it imports)
  with torch.no_grad():
    return model(torch.as_tensor(tokens_bt)).logits.float().numpy()


@dataclasses.dataclass(frozen=True)
class GreedyParity:
  ours: list[int]  # generated ids, the stop id included
  hf: list[int]
  min_margin: float  # smallest top-1 minus top-2 logit over transformers' steps

  @property
  def equal(self) -> bool:
    return self.ours == self.hf

  def __str__(self) -> str:
    verdict = "equal" if self.equal else f"DIFFER (ours {self.ours}, transformers {self.hf})"
    return (f"greedy tokens {verdict}: {len(self.hf)} tokens, smallest top-1/top-2 logit gap "
            f"{self.min_margin:.3g}")


def hf_greedy(hf_dir: str | Path, prompt: list[int], *, max_new_tokens: int,
              stop_ids: list[int]) -> tuple[list[int], float]:
  """transformers' greedy `generate`: the new ids (stop id included) and the smallest top-2 gap."""
  model = load_hf_model(hf_dir)
  import torch  # noqa: PLC0415
  with torch.no_grad():
    out = model.generate(torch.as_tensor([prompt]), do_sample=False,
                         max_new_tokens=max_new_tokens, eos_token_id=stop_ids or None,
                         pad_token_id=stop_ids[0] if stop_ids else 0, output_logits=True,
                         return_dict_in_generate=True)
  top2 = torch.stack(out.logits).float().topk(2, dim=-1).values  # [steps, 1, 2]
  return out.sequences[0, len(prompt):].tolist(), float((top2[..., 0] - top2[..., 1]).min())


def our_greedy(cfg: ModelConfig, params: Any, prompt: list[int], *, max_new_tokens: int,
               stop_ids: list[int]) -> list[int]:
  """Our sampler at temperature 0 (float32): the new ids, the stop id included."""
  from motif_jax import sampling  # noqa: PLC0415 (sampling imports the model package)
  cfg32 = dataclasses.replace(cfg, dtype="float32", param_dtype="float32")
  params32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
  out = sampling.sample(params32, [prompt], cfg32, max_new_tokens=max_new_tokens,
                        temperature=0.0, stop_ids=stop_ids, key=jax.random.key(0))
  return out.tokens[0, :int(out.lengths[0])].tolist()


def check_greedy(hf_dir: str | Path, cfg: ModelConfig, params: Any, prompt: list[int], *,
                 max_new_tokens: int, stop_ids: list[int]) -> GreedyParity:
  """Greedy generation of `prompt` by our sampler and by transformers; raises HFUnavailable."""
  hf_ids, margin = hf_greedy(hf_dir, prompt, max_new_tokens=max_new_tokens, stop_ids=stop_ids)
  ours = our_greedy(cfg, params, prompt, max_new_tokens=max_new_tokens, stop_ids=stop_ids)
  return GreedyParity(ours, hf_ids, margin)


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


def report_greedy(hf_dir: str | Path, cfg: ModelConfig, params: Any, question: str, *,
                  max_new_tokens: int = 32) -> str:
  """One line for the convert CLI: greedy tokens of `question`, rendered with the directory's own
  chat template and tokenizer, from our sampler and from transformers (or why there are none)."""
  from motif_jax.data.template import ChatTemplate  # noqa: PLC0415 (data imports are heavier)
  from motif_jax.data.tokenizer import HFTokenizer  # noqa: PLC0415
  hf_dir = Path(hf_dir)
  try:
    template = ChatTemplate(kind="hf", path=str(hf_dir))
  except ValueError as e:
    return f"greedy parity: not available: {e}"
  if not (hf_dir / "tokenizer.json").exists():
    return f"greedy parity: not available: no tokenizer.json in {hf_dir}"
  tokenizer = HFTokenizer(str(hf_dir / "tokenizer.json"))
  prompt = tokenizer.encode(template.prompt(question))
  stop = [i for i in (tokenizer.token_id(template.eos),) if i is not None]
  try:
    result = check_greedy(hf_dir, cfg, params, prompt, max_new_tokens=max_new_tokens,
                          stop_ids=stop)
  except HFUnavailable as e:
    return f"greedy parity: not available: {e}"
  return f"greedy parity on {question!r} (chat template, fp32): {result}"
