"""The target model's completion NLL (the optional style feature) against a direct computation."""

import jax
import numpy as np

from configs import data as data_config
from configs import tiny
from motif_jax import checkpoint
from motif_jax.data import curate
from motif_jax.data.config import DataConfig
from motif_jax.data.nll import make_nll_scorer
from motif_jax.data.packing import tokenize_example
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import ByteTokenizer
from motif_jax.model import ModelConfig, forward_logits, init_params
from data_helpers import record


def test_nll_scorer_matches_unpadded_forward():
  cfg = ModelConfig.from_config_dict(tiny.get_config("smoke").model)
  params = init_params(jax.random.key(0), cfg)
  template = ChatTemplate()
  tok = ByteTokenizer(template.special_tokens())
  records = [record("<think>\n1. 1 + 2 = 3\n</think>\n\\boxed{3}"),
             record("<think>\nfirst we add\n</think>\n\\boxed{3}", prompt="Add 1 and 2."),
             record("<think>\nx\n</think>\n\\boxed{1}", prompt="?")]
  scores = make_nll_scorer(params, cfg, tok, template, seq_len=128, batch_size=2)(records)
  assert len(scores) == 3  # two batches, the second padded
  # Oracle: one causal forward over rows zero-padded at the end, without segment ids (causality
  # keeps the padding invisible to the real tokens), float64 log-softmax, completion tokens only.
  examples = [tokenize_example(r, tok, template) for r in records]
  tokens_bt = np.zeros((3, 128), np.int32)
  for i, ex in enumerate(examples):
    tokens_bt[i, :len(ex["tokens"])] = ex["tokens"]
  logits_btv = np.asarray(forward_logits(params, tokens_bt, cfg), np.float64)
  for ex, logits_tv, got in zip(examples, logits_btv, scores):
    n = len(ex["tokens"])
    logp_tv = logits_tv[:n] - np.log(np.exp(logits_tv[:n]).sum(-1, keepdims=True))
    nll_t = -logp_tv[np.arange(n), ex["targets"]]
    want = nll_t[ex["loss_mask"] == 1].mean()
    np.testing.assert_allclose(got, want, rtol=2e-5)
    assert abs(want - nll_t.mean()) > 1e-4  # including the prompt would change it


def _curation_config(variant: str, nll_checkpoint: str) -> DataConfig:
  config = data_config.get_config(variant).data
  config.toy.update(dict(problems=5, reference_size=5))
  config.filters.style.nll_checkpoint = nll_checkpoint
  return DataConfig.from_config_dict(config)


def test_curation_scores_target_nll_only_with_a_checkpoint_and_the_style_filter(tmp_path):
  """The real gate (`curate._nll_scorer`): a saved target checkpoint and `style` in the filter
  order give every scored trace (and the reference profile) the model's completion NLL, equal
  to the scorer run directly; no checkpoint, or no style filter, gives none."""
  cfg = ModelConfig.from_config_dict(tiny.get_config("smoke").model)
  params = init_params(jax.random.key(1), cfg)
  target = checkpoint.save_params(tmp_path / "target", cfg, params)

  data_cfg = _curation_config("smoke", str(target))
  on = curate.curate(data_cfg)
  tok = curate.make_tokenizer(data_cfg)
  direct = make_nll_scorer(params, cfg, tok, data_cfg.template, seq_len=data_cfg.seq_len,
                           batch_size=data_cfg.filters.style.nll_batch_size)
  got = [item.stats.nll for item in on.scored]
  assert len(got) > 5 and None not in got
  np.testing.assert_allclose(got[:4], direct([item.record for item in on.scored[:4]]), rtol=1e-6)
  assert "nll" in on.profile.mean

  for off in (curate.curate(_curation_config("smoke", "")),
              curate.curate(_curation_config("smoke,verify_only", str(target)))):
    assert all(item.stats.nll is None for item in off.scored)
    assert off.profile is None or "nll" not in off.profile.mean
