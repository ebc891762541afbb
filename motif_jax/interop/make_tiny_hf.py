"""A tiny Llama-architecture Hugging Face model, built locally: nothing is downloaded.

`make_tiny_hf(directory)` writes what a model from the Hub brings:
  config.json + model.safetensors   transformers' LlamaForCausalLM, random init from a seed
  tokenizer.json                    a byte-level BPE trained with `tokenizers` on the toy corpus
  tokenizer_config.json             eos/pad tokens and a Jinja `chat_template`
  generation_config.json            eos as the stop token

The chat template is ChatML with reasoning: the generation prompt `<|im_start|>assistant\\n<think>`
opens the think block (the model writes the reasoning, `</think>`, the answer and `<|im_end|>`),
an assistant message may carry its reasoning inline (`<think>…</think>answer`) or in
`reasoning_content`, and `{% generation %}` marks the tokens the assistant writes, so
transformers' `return_assistant_tokens_mask=True` works on it. It is what the "Fine-tune your own
model" walkthrough (README) starts from; `transformers` and `torch` are needed (dev extra).

`write_toy_data(directory)` writes stand-ins for a user's own data, from the toy arithmetic task:
  train.jsonl    SFT records in the chat `messages` format (user turn, assistant turn with the
                 reasoning in `<think>…</think>` before the boxed answer) plus `answer`
  prompts.jsonl  RL prompts: `prompt`, `answer`, `domain` (fresh problems)
  test.jsonl     held-out evaluation prompts, same fields

  python -m experiments.make_tiny_hf --out=/tmp/own/hf --data=/tmp/own
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

from motif_jax.data.config import ToyConfig
from motif_jax.data import toy_corpus

EOS, PAD, BOS = "<|im_end|>", "<|endoftext|>", "<|im_start|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_TOKENS = (PAD, BOS, EOS, THINK_OPEN, THINK_CLOSE)

# Whitespace control: every tag trims, so only the quoted strings reach the output.
CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' -}}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{%- set content = message.content -%}"
    "{%- if message.reasoning_content is string -%}"
    "{%- set content = '<think>' + message.reasoning_content + '</think>' + content -%}"
    "{%- endif -%}"
    "{%- if not content.startswith('<think>') -%}"
    "{%- set content = '<think></think>' + content -%}{%- endif -%}"
    "{{- '<|im_start|>assistant\\n<think>' -}}"
    "{%- generation -%}{{- content[7:] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n<think>' -}}{%- endif -%}")


@dataclasses.dataclass(frozen=True)
class TinyHFConfig:
  vocab_size: int = 512  # BPE vocabulary including the special tokens
  hidden_size: int = 64
  intermediate_size: int = 128
  num_hidden_layers: int = 2
  num_attention_heads: int = 4
  num_key_value_heads: int = 2
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10_000.0
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 1024
  initializer_range: float = 0.02
  corpus_problems: int = 200  # toy problems per domain the BPE (and pretraining) sees
  # A few torch AdamW steps on the toy corpus (aligned teacher) rendered by the chat template,
  # so the model writes the think block and a boxed answer, mostly wrong; 0 = random init only.
  pretrain_steps: int = 0
  pretrain_batch: int = 16  # rows of pretrain_seq_len tokens
  pretrain_seq_len: int = 256
  pretrain_lr: float = 3e-3
  seed: int = 0


def _toy_config(seed: int, problems: int, max_steps: int = 8,
                heldout_per_difficulty: int = 1) -> ToyConfig:
  return ToyConfig(seed=seed, domains=("arith", "lists"), problems=problems, min_steps=2,
                   max_steps=max_steps, error_rate=0.15, format_error_rate=0.05,
                   duplicate_rate=0.0, reference_size=1,
                   heldout_per_difficulty=heldout_per_difficulty)


def corpus_text(cfg: TinyHFConfig) -> Iterator[str]:
  """Prompts and responses of the toy corpus (both teachers), the BPE's training text."""
  toy = _toy_config(cfg.seed, cfg.corpus_problems)
  for record in toy_corpus.corpus(toy):
    yield record.prompt
    yield record.response


def train_bpe(cfg: TinyHFConfig):
  """Byte-level BPE (GPT-2 style pre-tokenizer) with the chat template's tags as added tokens."""
  import tokenizers  # noqa: PLC0415
  from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(corpus_text(cfg), trainer=trainer)
  return tok


def tokenizer_config() -> dict:
  return dict(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE,
              eos_token=EOS, pad_token=PAD, bos_token=None, unk_token=None,
              add_bos_token=False, add_eos_token=False, clean_up_tokenization_spaces=False,
              model_max_length=1024)


def make_tiny_hf(directory: str | Path, cfg: TinyHFConfig = TinyHFConfig()) -> Path:
  """Write the tiny Llama model, its BPE tokenizer and chat template to `directory`."""
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  tok = train_bpe(cfg)
  vocab = tok.get_vocab_size(with_added_tokens=True)
  if vocab != cfg.vocab_size:  # the model's embedding must cover every id exactly
    raise ValueError(f"BPE training gave {vocab} tokens, not vocab_size={cfg.vocab_size}; "
                     "lower vocab_size or raise corpus_problems")
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")
  ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
  llama = transformers.LlamaConfig(
      vocab_size=vocab, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
      num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
      num_key_value_heads=cfg.num_key_value_heads, rms_norm_eps=cfg.rms_norm_eps,
      rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_word_embeddings,
      max_position_embeddings=cfg.max_position_embeddings,
      initializer_range=cfg.initializer_range, eos_token_id=ids[EOS], pad_token_id=ids[PAD],
      bos_token_id=None)
  torch.manual_seed(cfg.seed)
  model = transformers.LlamaForCausalLM(llama)
  with torch.no_grad():  # norm gains away from exactly 1, so a wrong norm mapping shows
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  if cfg.pretrain_steps:
    pretrain(model, tok, cfg)
  model.generation_config = transformers.GenerationConfig(
      eos_token_id=ids[EOS], pad_token_id=ids[PAD], bos_token_id=None)
  model.save_pretrained(directory)
  return directory


def pretrain(model, tok, cfg: TinyHFConfig) -> list[float]:
  """`cfg.pretrain_steps` AdamW steps of next-token loss on the aligned toy corpus as chat
  conversations (chat template rendered as transformers does), packed into fixed-length rows."""
  import torch  # noqa: PLC0415
  from motif_jax.data import chat_template  # noqa: PLC0415
  chat = chat_template.HFChat(CHAT_TEMPLATE, (("eos_token", EOS),))
  stream = []
  toy = _toy_config(cfg.seed, cfg.corpus_problems)
  for record in toy_corpus.corpus(toy, (toy_corpus.ALIGNED,)):
    text = chat.render(chat_template.messages("", record.prompt, record.response),
                       add_generation_prompt=False)
    stream += tok.encode(text, add_special_tokens=False).ids
  row = cfg.pretrain_seq_len + 1
  rows = torch.tensor(stream[:len(stream) // row * row]).view(-1, row)
  generator = torch.Generator().manual_seed(cfg.seed)
  optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.0)
  losses, threads = [], torch.get_num_threads()
  torch.set_num_threads(1)  # a tiny model: more threads only contend (13x slower on 2 busy cores)
  model.train()
  for _ in range(cfg.pretrain_steps):
    batch = rows[torch.randint(len(rows), (cfg.pretrain_batch,), generator=generator)]
    loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss  # HF shifts labels itself
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(float(loss.detach()))
  model.eval()
  torch.set_num_threads(threads)
  return losses


def write_toy_data(directory: str | Path, *, problems: int = 200, max_steps: int = 4,
                   test_per_difficulty: int = 4, seed: int = 1) -> dict[str, Path]:
  """train.jsonl (messages), prompts.jsonl and test.jsonl (prompt + answer) under `directory`."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  toy = _toy_config(seed, problems, max_steps, test_per_difficulty)
  train = [dict(messages=[dict(role="user", content=r.prompt),
                          dict(role="assistant", content=r.response)],
                answer=r.answer, domain=r.domain)
           for r in toy_corpus.corpus(toy, (toy_corpus.ALIGNED,))]
  prompts = [dict(prompt=p.prompt, answer=p.answer, domain=p.domain)
             for p in toy_corpus.problems(toy, "rl", max(problems // 4, 1))]
  test = [dict(prompt=p.prompt, answer=p.answer, domain=p.domain,
               difficulty=p.difficulty) for p in toy_corpus.heldout(toy)]
  paths = {}
  for name, rows in (("train", train), ("prompts", prompts), ("test", test)):
    paths[name] = directory / f"{name}.jsonl"
    paths[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
  return paths
