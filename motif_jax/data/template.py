"""Chat template with the Motif reasoning convention (recipe §1.1).

The prompt ends with `<|assistant|><think>`: the template opens the think block and the model
writes the reasoning, `</think>`, the final answer and the end-of-sequence token. A record's
`response` holds the whole `<think>…</think>answer` text; `completion` drops the leading
`<think>` that the prompt already contains, so prompt + completion reads as one conversation.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """Turn tags and reasoning markers; `system` is the system prompt ("" = no system turn)."""

  system: str = ""
  system_tag: str = "<|system|>"
  user_tag: str = "<|user|>"
  assistant_tag: str = "<|assistant|>"
  think_open: str = "<think>"
  think_close: str = "</think>"
  eos: str = "<|endoftext|>"

  def __post_init__(self):
    for name in ("system_tag", "user_tag", "assistant_tag", "think_open", "think_close", "eos"):
      if not getattr(self, name):
        raise ValueError(f"data.template.{name} must not be empty")
    if self.think_open == self.think_close:
      raise ValueError("data.template.think_open and data.template.think_close must differ")

  def prompt(self, user_text: str) -> str:
    """The model input before the completion; ends with assistant_tag + think_open."""
    system = f"{self.system_tag}{self.system}" if self.system else ""
    return f"{system}{self.user_tag}{user_text}{self.assistant_tag}{self.think_open}"

  def completion(self, response: str) -> str:
    """What the model is trained to write: the response without its opening think tag, + eos."""
    return response.removeprefix(self.think_open) + self.eos

  def special_tokens(self) -> tuple[str, ...]:
    """Strings a tokenizer should keep whole."""
    return (self.eos, self.system_tag, self.user_tag, self.assistant_tag, self.think_open,
            self.think_close)
