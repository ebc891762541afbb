"""`data.template.kind=hf`: the model's own Jinja chat template, checked against transformers.

Oracle: transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)` on the same
local BPE tokenizer. Three templates with `{% generation %}` blocks: the tiny model's (ChatML whose
generation prompt opens the think block), a Qwen3-style one (the assistant writes `<think>` and
the template re-renders the reasoning with its own newlines) and a Llama-3-style one (bos token,
header tags, `<|eot_id|>` as eos).
"""

import dataclasses
import json

import numpy as np
import pytest

from configs import common
from motif_jax import evaluation
from motif_jax.data import chat_template, packing, traces
from motif_jax.data.config import DataConfig, TraceConfig
from motif_jax.data.records import Record
from motif_jax.data.template import ChatTemplate
from motif_jax.data.tokenizer import HFTokenizer
from motif_jax.interop import make_tiny_hf
from motif_jax.rl import rollout

transformers = pytest.importorskip("transformers")

QWEN3_STYLE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{%- set content = message.content -%}{%- set reasoning = '' -%}"
    "{%- if '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}{%- endif -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{{- '<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>' -}}"
    "{%- endgeneration -%}{{- '\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
LLAMA3_STYLE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message.role == 'assistant' -%}"
    "{%- generation -%}{{- message.content + '<|eot_id|>' -}}{%- endgeneration -%}"
    "{%- else -%}{{- message.content + '<|eot_id|>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}")
# Strips the reasoning from the assistant turn (DeepSeek-R1's template does): cannot train it.
DROPS_REASONING = QWEN3_STYLE.replace("'<think>\\n' + reasoning + '\\n</think>\\n\\n' + ", "")
EXTRA_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
TEMPLATES = {  # name -> (template, eos, bos)
    "tiny": (make_tiny_hf.CHAT_TEMPLATE, "<|im_end|>", None),
    "qwen3_style": (QWEN3_STYLE, "<|im_end|>", None),
    "llama3_style": (LLAMA3_STYLE, "<|eot_id|>", "<|begin_of_text|>"),
}
RECORDS = [
    Record(prompt="What is 2+2?", response="<think>2+2=4</think>\\boxed{4}", domain="math",
           source="t", answer="4"),
    Record(prompt="Compute 7 * 5 then add 1.",
           response="<think>\n1. 7 * 5 = 35\n2. 35 + 1 = 36\n</think>\n\\boxed{36}",
           domain="arith", source="t", answer="36"),
    Record(prompt="Sort [3, 1, 2]. Reply briefly.",
           response="<think>\nsmallest first\n</think>\nThe list is \\boxed{[1, 2, 3]}",
           domain="lists", source="t", answer="[1, 2, 3]"),
]


def _write_model_dir(directory, template: str, eos: str, bos: str | None):
  tok = make_tiny_hf.train_bpe(make_tiny_hf.TinyHFConfig(corpus_problems=50, vocab_size=400))
  tok.add_special_tokens(EXTRA_TOKENS)
  directory.mkdir()
  tok.save(str(directory / "tokenizer.json"))
  config = dict(make_tiny_hf.tokenizer_config(), chat_template=template, eos_token=eos,
                bos_token=bos)
  (directory / "tokenizer_config.json").write_text(json.dumps(config))
  return directory


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("templates")
  return {name: _write_model_dir(root / name, *spec) for name, spec in TEMPLATES.items()}


def _oracle(directory, record: Record, system: str) -> tuple[list[int], list[int]]:
  """transformers' token ids and assistant mask for the whole conversation."""
  tok = transformers.AutoTokenizer.from_pretrained(str(directory))
  msgs = chat_template.messages(system, record.prompt, record.response)
  out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                return_assistant_tokens_mask=True)
  return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("system_from", ["none", "template", "record"])
def test_loss_mask_is_transformers_assistant_mask(model_dirs, name, system_from):
  """The system turn comes from data.template.system or from the record's own (chat messages
  keep it in meta["system"]); the record's wins."""
  system = "" if system_from == "none" else "You are a careful solver."
  template = ChatTemplate(kind="hf", path=str(model_dirs[name]),
                          system="Ignored." if system_from == "record" else system)
  tokenizer = HFTokenizer(str(model_dirs[name] / "tokenizer.json"))
  for record in RECORDS:
    if system_from == "record":
      record = dataclasses.replace(record, meta={"system": system})
    example = packing.tokenize_example(record, tokenizer, template)
    ids = np.concatenate([example["tokens"][:1], example["targets"]])
    ours_mask = np.concatenate([[0], example["loss_mask"]])
    want_ids, want_mask = _oracle(model_dirs[name], record, system)
    # transformers' rendering goes on past eos (e.g. a newline); nothing after eos is generated.
    last = max(i for i, m in enumerate(want_mask) if m) + 1
    assert ids.tolist() == want_ids[:last], (name, record.prompt)
    assert ours_mask.tolist() == want_mask[:last], (name, record.prompt)
    assert tokenizer.decode(ids[ours_mask == 1]).endswith(template.eos)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_prompt_ends_with_the_generation_prompt(model_dirs, name):
  template = ChatTemplate(kind="hf", path=str(model_dirs[name]), system="Be brief.")
  tok = transformers.AutoTokenizer.from_pretrained(str(model_dirs[name]))
  msgs = chat_template.messages("Be brief.", "What is 2+2?")
  want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
  assert template.prompt("What is 2+2?") == want
  without = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
  assert want.startswith(without) and len(want) > len(without)
  assert template.eos == TEMPLATES[name][1]
  assert template.special_tokens() == (TEMPLATES[name][1], "<think>", "</think>")


@pytest.mark.parametrize("name,opens_think", [("tiny", True), ("qwen3_style", False),
                                              ("llama3_style", False)])
def test_think_markers(model_dirs, name, opens_think):
  """A completion is read after the think tag only when the prompt opens it; decoding the trained
  tokens gives back a response whose think block and answer the reward parser finds."""
  template = ChatTemplate(kind="hf", path=str(model_dirs[name]))
  tokenizer = HFTokenizer(str(model_dirs[name] / "tokenizer.json"))
  assert template.opens_think == opens_think
  assert template.prompt("q").endswith("<think>") == opens_think
  record = RECORDS[1]
  completion = template.completion(record.response)
  assert completion.startswith("<think>") != opens_think
  ids = np.asarray(tokenizer.encode(completion))
  text = evaluation._completion_text(ids, len(ids), True, tokenizer, template)
  assert rollout.completion_text(ids, True, tokenizer, template) == text  # RL reads it alike
  trace = traces.split_trace(text, template, TraceConfig(r"\n+", r"^\s*\d+[.)]"))
  assert trace.has_think and trace.think_closed
  assert "35 + 1 = 36" in trace.think and "\\boxed{36}" in trace.final


def test_motif_template_is_unchanged():
  template = ChatTemplate()
  assert template.kind == "motif" and template.opens_think
  assert template.prompt("hi") == "<|user|>hi<|assistant|><think>"
  assert template.completion("<think>a</think>b") == "a</think>b<|endoftext|>"
  record = dataclasses.replace(RECORDS[0], prompt="hi", meta={"system": "S"})
  assert template.record_prompt(record) == "<|system|>S<|user|>hi<|assistant|><think>"


def test_data_config_builds_the_hf_template(model_dirs):
  data = common.data(tokenizer=str(model_dirs["tiny"] / "tokenizer.json"))
  data.template.kind = "hf"
  data.template.path = str(model_dirs["tiny"])
  template = DataConfig.from_config_dict(data).template
  assert template.eos == "<|im_end|>"  # the model's, not the Motif default
  assert template.prompt("x").endswith("<|im_start|>assistant\n<think>")


def test_unusable_templates_are_refused(model_dirs, tmp_path):
  with pytest.raises(ValueError, match="data.template.kind='jinja' must be one of"):
    ChatTemplate(kind="jinja")
  with pytest.raises(ValueError, match="data.template.path must name the model directory"):
    ChatTemplate(kind="hf")
  with pytest.raises(ValueError, match="no such directory"):
    ChatTemplate(kind="hf", path=str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no chat template there"):
    ChatTemplate(kind="hf", path=str(tmp_path / "empty"))
  drops = _write_model_dir(tmp_path / "drops", DROPS_REASONING, "<|im_end|>", None)
  with pytest.raises(ValueError, match="drops 'Probe reasoning.'.*cannot train reasoning"):
    ChatTemplate(kind="hf", path=str(drops))
  no_eos = _write_model_dir(tmp_path / "no_eos", QWEN3_STYLE, "<|eot_id|>", None)
  with pytest.raises(ValueError, match="without the eos token '<\\|eot_id\\|>'"):
    ChatTemplate(kind="hf", path=str(no_eos))


def test_tokenizer_path_may_be_the_model_directory(model_dirs, tmp_path):
  directory = model_dirs["tiny"]
  text = ChatTemplate(kind="hf", path=str(directory)).prompt("What is 2+2?")
  assert HFTokenizer(str(directory)).encode(text) == HFTokenizer(
      str(directory / "tokenizer.json")).encode(text)
  with pytest.raises(ValueError, match="data.tokenizer=.*no such tokenizer.json"):
    HFTokenizer(str(tmp_path))
