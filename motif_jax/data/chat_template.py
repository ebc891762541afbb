"""A model's own Jinja chat template (`data.template.kind=hf`), rendered as transformers does.

The template comes from the model directory: `chat_template.jinja`, else the `chat_template` of
`tokenizer_config.json`. Rendering copies `transformers`' `apply_chat_template`: a sandboxed Jinja
environment with `trim_blocks`/`lstrip_blocks`, loop controls, the `{% generation %}` tag,
`raise_exception`, `strftime_now` and a non-escaping `tojson`, with `messages`,
`add_generation_prompt` and the special tokens (`bos_token`, `eos_token`, ...) as variables.

A record becomes two strings (what `packing.tokenize_example` tokenizes and masks):
  prompt      [system] + user, rendered with the generation prompt (e.g. `<|im_start|>assistant\\n`,
              or `...assistant\\n<think>` for templates whose generation prompt opens the think
              block)
  completion  what the same conversation with the assistant's `response` adds after the prompt, up
              to and including the eos token that ends the turn (text the template writes after
              it, such as a newline, is never generated and is dropped)
so the loss mask covers exactly the tokens the assistant writes: the tokens transformers marks
with `return_assistant_tokens_mask=True` on templates with `{% generation %}` blocks. The
response keeps its reasoning inline (`<think>…</think>answer`); templates that read
`reasoning_content` or split the content at `</think>` (Qwen3) render it their way. A template
that drops the reasoning of the final turn, or renders the assistant turn so that it does not
extend the generation prompt, is refused when loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")
_PROBE_USER = "Probe question?"
_PROBE_REASONING, _PROBE_ANSWER = "Probe reasoning.", "Probe answer."


@functools.lru_cache(maxsize=8)
def _compile(source: str):
  import jinja2  # noqa: PLC0415
  from jinja2 import ext, nodes  # noqa: PLC0415
  from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

  class Generation(ext.Extension):
    """`{% generation %}…{% endgeneration %}` renders its body (transformers' assistant tracker
    only records where it is; our masks come from the prompt/completion split)."""

    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[Generation, ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals.update(raise_exception=raise_exception,
                     strftime_now=lambda fmt: datetime.now().strftime(fmt))
  return env.from_string(source)


def _token_text(value: Any) -> str | None:
  """tokenizer_config.json writes special tokens as strings or AddedToken dicts."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


@dataclasses.dataclass(frozen=True)
class HFChat:
  """A compiled-on-use Jinja chat template and the special tokens it is rendered with."""

  source: str
  special: tuple[tuple[str, str | None], ...]  # (bos_token, "<s>"), ...

  @property
  def eos(self) -> str | None:
    return dict(self.special).get("eos_token")

  def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool) -> str:
    return _compile(self.source).render(messages=messages, tools=None, documents=None,
                                        add_generation_prompt=add_generation_prompt,
                                        **dict(self.special))


def read_template(path: str | Path, field: str = "data.template.path") -> HFChat:
  """The chat template of the model directory `path` (or of the tokenizer_config.json /
  chat_template.jinja file it names); errors name `field`."""
  path = Path(path)
  directory = path.parent if path.is_file() else path
  config_file = directory / "tokenizer_config.json"
  if not directory.is_dir():
    raise ValueError(f"{field}={str(path)!r}: no such directory")
  config = json.loads(config_file.read_text()) if config_file.exists() else {}
  if (directory / "chat_template.jinja").exists():
    source = (directory / "chat_template.jinja").read_text()
  else:
    source = config.get("chat_template")
    if isinstance(source, list):  # several named templates: the "default" one
      source = next((t["template"] for t in source if t.get("name") == "default"), None)
  if not source:
    raise ValueError(f"{field}={str(path)!r}: no chat template there (neither "
                     "chat_template.jinja nor a chat_template in tokenizer_config.json)")
  special = tuple((name, _token_text(config.get(name))) for name in SPECIAL_TOKEN_NAMES)
  return HFChat(source, special)


@functools.lru_cache(maxsize=8)
def load(path: str, think_open: str, think_close: str) -> HFChat:
  """`read_template(path)`, checked once with a probe conversation (see `check`)."""
  chat = read_template(path)
  check(chat, think_open, think_close, field=f"data.template.path={path!r}")
  return chat


def messages(system: str, user_text: str, response: str | None = None) -> list[dict[str, str]]:
  out = [{"role": "system", "content": system}] if system else []
  out.append({"role": "user", "content": user_text})
  if response is not None:
    out.append({"role": "assistant", "content": response})
  return out


def prompt(chat: HFChat, system: str, user_text: str) -> str:
  """[system] + user turn + the generation prompt."""
  return chat.render(messages(system, user_text), add_generation_prompt=True)


def completion(chat: HFChat, system: str, response: str, *, user_text: str = _PROBE_USER) -> str:
  """The assistant turn for `response` as the template renders it after the generation prompt,
  ending with the eos token."""
  head = prompt(chat, system, user_text)
  full = chat.render(messages(system, user_text, response), add_generation_prompt=False)
  if not full.startswith(head):
    raise ValueError("the chat template renders the assistant turn so that it does not extend "
                     f"the generation prompt ({head[-40:]!r} vs {full[len(head) - 40:][:80]!r}); "
                     "prompt and completion cannot be split")
  tail = full[len(head):]
  end = tail.rfind(chat.eos) if chat.eos else -1
  if end < 0:
    raise ValueError(f"the chat template ends the assistant turn without the eos token "
                     f"{chat.eos!r} of tokenizer_config.json (turn: {tail[-40:]!r})")
  return tail[:end + len(chat.eos)]


def check(chat: HFChat, think_open: str, think_close: str, *, field: str) -> None:
  """Render a probe conversation and raise if the template cannot train reasoning."""
  if not chat.eos:
    raise ValueError(f"{field}: tokenizer_config.json names no eos_token (the stop token)")
  try:
    head = prompt(chat, "", _PROBE_USER)
    response = f"{think_open}{_PROBE_REASONING}{think_close}{_PROBE_ANSWER}"
    tail = completion(chat, "", response)
  except Exception as e:  # a TemplateError, or one of completion's ValueErrors
    raise ValueError(f"{field}: {e}") from None
  generated = (think_open if head.endswith(think_open) else "") + tail
  for part in (_PROBE_REASONING, _PROBE_ANSWER, think_close):
    if part not in generated:
      raise ValueError(f"{field}: the chat template drops {part!r} from the final assistant turn "
                       f"(renders {tail!r}); it cannot train reasoning")
  if generated.count(think_open) != 1:
    raise ValueError(f"{field}: the generation prompt plus the rendered assistant turn hold "
                     f"{generated.count(think_open)} think_open markers {think_open!r}, not 1 "
                     f"({generated!r}); check data.template.think_open")
