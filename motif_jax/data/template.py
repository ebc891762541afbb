"""Chat template with the Motif reasoning convention (recipe §1.1).

The prompt ends with `<|assistant|><think>`: the template opens the think block and the model
writes the reasoning, `</think>`, the final answer and the end-of-sequence token. A record's
`response` holds the whole `<think>…</think>answer` text; `completion` drops the leading
`<think>` that the prompt already contains, so prompt + completion reads as one conversation.

`kind="hf"` renders the model's own Jinja chat template instead (`motif_jax.data.chat_template`,
read from the model directory `path`): the prompt ends with that template's generation prompt,
which may or may not open the think block (`opens_think`), and the completion is the assistant
turn as the template renders it, up to the tokenizer's eos token. The tag fields are unused then,
and `eos` becomes the model's `eos_token` (tokenizer_config.json).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from motif_jax.data import chat_template

KINDS = ("motif", "hf")


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """Turn tags and reasoning markers; `system` is the system prompt ("" = no system turn)."""
  CONFIG_PATH: ClassVar[str] = "data.template"  # error messages; see typed_config.build

  system: str = ""
  system_tag: str = "<|system|>"
  user_tag: str = "<|user|>"
  assistant_tag: str = "<|assistant|>"
  think_open: str = "<think>"
  think_close: str = "</think>"
  eos: str = "<|endoftext|>"
  kind: str = "motif"  # motif (the tags above) | hf (the model's Jinja chat template)
  path: str = ""  # kind=hf: model directory with tokenizer_config.json or chat_template.jinja

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"data.template.kind={self.kind!r} must be one of {KINDS}")
    for name in ("system_tag", "user_tag", "assistant_tag", "think_open", "think_close", "eos"):
      if not getattr(self, name):
        raise ValueError(f"data.template.{name} must not be empty")
    if self.think_open == self.think_close:
      raise ValueError("data.template.think_open and data.template.think_close must differ")
    if self.kind == "hf":
      if not self.path:
        raise ValueError("data.template.path must name the model directory (its "
                         "tokenizer_config.json) when data.template.kind='hf'")
      chat = chat_template.load(self.path, self.think_open, self.think_close)
      object.__setattr__(self, "eos", chat.eos)  # the model's own stop token

  @property
  def hf_chat(self) -> chat_template.HFChat:
    return chat_template.load(self.path, self.think_open, self.think_close)

  @property
  def opens_think(self) -> bool:
    """Whether the prompt ends with think_open (so a completion starts inside the think block)."""
    return self.kind == "motif" or self.prompt("").endswith(self.think_open)

  def prompt(self, user_text: str, system: str | None = None) -> str:
    """The model input before the completion; ends with assistant_tag + think_open (motif) or
    the chat template's generation prompt (hf). `system` (None = `self.system`; "" = none)."""
    system = self.system if system is None else system
    if self.kind == "hf":
      return chat_template.prompt(self.hf_chat, system, user_text)
    system = f"{self.system_tag}{system}" if system else ""
    return f"{system}{self.user_tag}{user_text}{self.assistant_tag}{self.think_open}"

  def record_prompt(self, record) -> str:
    """`prompt` of a Record, with its own system turn (`meta["system"]`, from chat messages) in
    place of `self.system` when it has one."""
    return self.prompt(record.prompt, record.meta.get("system") or None)

  def completion(self, response: str) -> str:
    """What the model is trained to write: the response without its opening think tag, + eos
    (motif), or the rendered assistant turn up to eos (hf)."""
    if self.kind == "hf":
      return chat_template.completion(self.hf_chat, self.system, response)
    return response.removeprefix(self.think_open) + self.eos

  def special_tokens(self) -> tuple[str, ...]:
    """Strings a tokenizer should keep whole."""
    if self.kind == "hf":  # the model's tokenizer defines its own added tokens
      return (self.eos, self.think_open, self.think_close)
    return (self.eos, self.system_tag, self.user_tag, self.assistant_tag, self.think_open,
            self.think_close)
