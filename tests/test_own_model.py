"""Fine-tune your own model (README walkthrough): a tiny Llama with a BPE tokenizer and chat
template built locally -> convert --from_hf -> SFT on chat `messages` records with its own
template -> RL on `answer` rewards -> evaluate -> convert --to_hf -> transformers generates the
same greedy tokens as our sampler.

Fast: the HF -> ours -> HF round trip (bit-exact tensors, fp32 logit parity, greedy tokens on a
chat-template prompt). Slow: the whole path with the walkthrough's configs at smoke budgets.
"""

import contextlib
import io
import json
import re

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from configs import finetune
from motif_jax import checkpoint, eval_run, trainer
from motif_jax.data.config import DataConfig
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import HFTokenizer
from motif_jax.interop import hf, make_tiny_hf, parity
from motif_jax.model import ModelConfig

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

MAX_ABS_DIFF, MAX_KL = 1e-4, 1e-6  # fp32 logits, ours vs transformers
QUESTION = "Start with 12. Add 7, then multiply by 3. What is the result?"


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
  return make_tiny_hf.make_tiny_hf(tmp_path_factory.mktemp("own") / "hf")


def _chat_prompt(directory) -> tuple[list[int], list[int]]:
  """QUESTION rendered by the directory's own chat template and tokenizer, and the stop ids."""
  template = ChatTemplate(kind="hf", path=str(directory))
  tokenizer = HFTokenizer(str(directory / "tokenizer.json"))
  return tokenizer.encode(template.prompt(QUESTION)), [tokenizer.token_id(template.eos)]


def _assert_same_greedy(hf_dir, cfg, params, max_new_tokens=24):
  prompt, stop = _chat_prompt(hf_dir)
  result = parity.check_greedy(hf_dir, cfg, params, prompt, max_new_tokens=max_new_tokens,
                               stop_ids=stop)
  assert result.equal, result
  assert len(result.hf) > 1
  # Not a near-tie anywhere, so equal tokens mean equal argmaxes (our |Δlogit| is ~1e-6).
  assert result.min_margin > 1e-5, result
  return result


def test_tiny_llama_is_what_transformers_loads(tiny_hf):
  config = json.loads((tiny_hf / "config.json").read_text())
  assert config["architectures"] == ["LlamaForCausalLM"]
  tok = transformers.AutoTokenizer.from_pretrained(str(tiny_hf))
  assert len(tok) == config["vocab_size"] == 512
  assert tok.eos_token == "<|im_end|>"
  ids = tok.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=True,
                                add_generation_prompt=True, return_dict=True)["input_ids"]
  assert tok.decode(ids) == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>"
  # The BPE learned the corpus: a toy prompt costs far fewer tokens than bytes.
  assert len(tok.encode(QUESTION, add_special_tokens=False)) < len(QUESTION) / 3


@pytest.fixture(scope="module")
def imported(tiny_hf):
  work = tiny_hf.parent / "base"
  cfg, params = hf.import_checkpoint(tiny_hf, work)
  return work, cfg, params


def test_finetune_config_is_built_from_the_import(imported):
  work, cfg, _ = imported
  sft = finetune.get_config(f"base={work},data=train.jsonl,steps=7")
  assert ModelConfig.from_config_dict(sft.model).architecture() == cfg.architecture()
  assert (sft.train.num_steps, sft.optim.decay_steps, sft.train.init_from) == (7, 7, str(work))
  data = DataConfig.from_config_dict(sft.data)
  assert (data.template.kind, data.template.eos, data.inputs) == ("hf", "<|im_end|>",
                                                                   ("train.jsonl",))
  rl = finetune.get_config(f"rl,base={work},init=/sft,data=prompts.jsonl")
  assert (rl.rl.init_from, rl.train.prompts, rl.data.template.path) == (
      "/sft", "prompts.jsonl", str(work))
  ev = finetune.get_config(f"evaluate,base={work},init=/rl,data=test.jsonl")
  assert (ev.checkpoint, ev.data, ev.template.kind, ev.eval.temperature) == (
      "/rl", "test.jsonl", "hf", 0.0)
  with pytest.raises(ValueError, match="needs base=DIR"):
    finetune.get_config("rl")
  with pytest.raises(ValueError, match="no model_config.json there"):
    finetune.get_config(f"base={work / 'missing'}")


def _run_convert(*args) -> str:
  """experiments.convert in-process; returns what it printed."""
  from experiments import convert  # noqa: PLC0415
  argv = ["convert", *args]
  convert.FLAGS(argv)
  buffer = io.StringIO()
  try:
    with contextlib.redirect_stdout(buffer):
      convert.main(argv[:1])
  finally:
    convert.FLAGS.unparse_flags()
  return buffer.getvalue()


def test_hf_to_ours_to_hf_round_trip(tiny_hf, imported, tmp_path):
  work, cfg, params = imported
  out = tmp_path / "out"
  assert (cfg.attention, cfg.mlp, cfg.rms_norm_eps, cfg.tie_embeddings) == (
      "gqa", "swiglu", 1e-5, False)
  p = parity.check(tiny_hf, cfg, params)
  assert p.max_abs_diff <= MAX_ABS_DIFF and p.mean_kl <= MAX_KL, p
  _assert_same_greedy(tiny_hf, cfg, params)

  printed = _run_convert(f"--workdir={work}", f"--to_hf={out}", "--check",
                         f"--check_question={QUESTION}", "--check_tokens=24")
  assert re.search(r"greedy parity on .*: greedy tokens equal: \d+ tokens", printed), printed
  before, after = load_file(tiny_hf / "model.safetensors"), load_file(out / "model.safetensors")
  assert before.keys() == after.keys()
  for name in before:  # unchanged weights come back bit for bit
    assert before[name].tobytes() == after[name].tobytes(), name
  for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
    assert (out / name).read_bytes() == (tiny_hf / name).read_bytes(), name


def _trained(tmp_path_factory):
  """The walkthrough at smoke budgets; returns the directories it wrote."""
  root = tmp_path_factory.mktemp("walkthrough")
  # Pretrained a little, so sampled completions differ in format and RL has a signal.
  hf_dir = make_tiny_hf.make_tiny_hf(root / "hf", make_tiny_hf.TinyHFConfig(pretrain_steps=150))
  data = make_tiny_hf.write_toy_data(root / "data", problems=40, test_per_difficulty=1)
  base = root / "base"
  hf.import_checkpoint(hf_dir, base)
  common = f"base={base}"
  sft_summary = trainer.train(
      finetune.get_config(f"{common},data={data['train']},smoke,steps=3"), str(root / "sft"),
      log=lambda _: None)
  from motif_jax.rl import trainer as rl_trainer  # noqa: PLC0415
  rl_summary = rl_trainer.train(
      finetune.get_config(f"rl,{common},init={root / 'sft'},data={data['prompts']},smoke"),
      str(root / "rl"), log=lambda _: None)
  eval_result = eval_run.run(
      finetune.get_config(f"evaluate,{common},init={root / 'rl'},data={data['test']},smoke"),
      str(root / "eval"), log=lambda _: None)
  hf.export_checkpoint(root / "rl", root / "out")
  return dict(root=root, hf=hf_dir, sft=sft_summary, rl=rl_summary, eval=eval_result)


@pytest.mark.slow
def test_fine_tune_your_own_model_end_to_end(tmp_path_factory):
  run = _trained(tmp_path_factory)
  assert run["sft"]["step"] == 3 and np.isfinite(run["sft"]["train"]["loss/ce"])
  assert run["rl"]["step"] == 2 and "rl" in run["rl"]
  assert run["eval"]["overall"]["prompts"] == 6  # 2 domains x difficulties 2-4 x 1
  root = run["root"]
  base, sft, (rl_cfg, rl_params) = (checkpoint.restore_params(root / "base")[1],
                                    checkpoint.restore_params(root / "sft" / "final")[1],
                                    checkpoint.restore_params(root / "rl" / "final"))
  for before, after in ((base, sft), (sft, rl_params)):  # each stage trained the weights
    assert any(not np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
  # The export carries the tokenizer and chat template the runs trained with, and transformers
  # reproduces our sampler's greedy tokens with the exported weights.
  assert (root / "out" / "tokenizer_config.json").read_bytes() == (
      run["hf"] / "tokenizer_config.json").read_bytes()
  p = parity.check(root / "out", rl_cfg, rl_params)
  assert p.max_abs_diff <= MAX_ABS_DIFF and p.mean_kl <= MAX_KL, p
  _assert_same_greedy(root / "out", rl_cfg, rl_params, max_new_tokens=32)
