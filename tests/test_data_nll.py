"""The target model's completion NLL (the optional style feature) against a direct computation."""

import jax
import numpy as np

from configs import tiny
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
