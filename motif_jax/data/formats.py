"""Record formats people already have -> the one internal `Record`.

Every input item (a JSONL line, a Parquet row, an ArrayRecord entry) is read in one of these
formats, detected per item unless `data.format` names one:

  messages           {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
                     (OpenAI / Hugging Face conversational): optional system turns, one user turn,
                     then one assistant turn. The assistant's separate reasoning field
                     (`reasoning_content`, `reasoning`: `data.fields.reasoning`) becomes the think
                     block; the system text is kept in `meta["system"]`.
  prompt_completion  {"prompt": ..., "completion": ...} (TRL), texts or message lists.
  record             flat fields: the project's own shape, or any other through
                     `data.fields` (math sets: fields.prompt=problem, fields.response=solution;
                     code sets: fields.prompt=question, fields.tests=test_cases).

Detection: an item with the messages field is `messages`, one with the completion field is
`prompt_completion`, anything else is `record`. In every format the answer, tests, domain and
source are top-level fields named by `data.fields`; a missing domain or source takes
`data.default_domain` / `data.default_source`, else the input file name's stem. Other fields go
to `meta`. A record still needs an answer or tests (the verify filter checks against them).

Prompt sets (evaluation, RL: `ReadSpec.prompt_only`) need no response: an item without one reads
with `response=""` - a flat prompt with no response field, a prompt/completion item with no
completion, a `messages` list ending in the user's turn, or TRL's conversational prompt-only
shape `{"prompt": [system..., user]}`. An item that has a response keeps it.

Malformed items raise `InvalidRecord(reason)`; the readers count them per file and reason.
Reasons name the input field that was looked for (`missing_problem` when fields.prompt=problem).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from motif_jax.data.config import RECORD_FORMATS, DataConfig, FieldsConfig
from motif_jax.data.records import InvalidRecord, Record, decode, make_record, text

SYSTEM_ROLES = ("system", "developer")  # OpenAI's newer name for the system turn


@dataclasses.dataclass(frozen=True)
class ReadSpec:
  """How items are read: format, field names, defaults and the think markers to write."""

  format: str  # one of RECORD_FORMATS
  fields: FieldsConfig
  default_domain: str  # "" = the file name's stem
  default_source: str  # "" = the file name's stem
  think_open: str
  think_close: str
  prompt_only: bool = False  # a prompt set: the response is optional (module docstring)

  def __post_init__(self):
    if self.format not in RECORD_FORMATS:
      raise ValueError(f"format={self.format!r} must be one of {RECORD_FORMATS}")


# The project's own record shape, detected formats, no renamed fields: what `sources` reads by
# default (reference samples, tools that have no config).
NATIVE = ReadSpec(
    format="auto",
    fields=FieldsConfig(prompt="prompt", response="response", answer="answer", tests="tests",
                        domain="domain", source="source", messages="messages",
                        completion="completion", reasoning=("reasoning_content", "reasoning")),
    default_domain="", default_source="", think_open="<think>", think_close="</think>")


def read_spec(cfg: DataConfig) -> ReadSpec:
  """The ReadSpec of a data config (its template supplies the think markers)."""
  return ReadSpec(format=cfg.format, fields=cfg.fields, default_domain=cfg.default_domain,
                  default_source=cfg.default_source, think_open=cfg.template.think_open,
                  think_close=cfg.template.think_close)


def detect(item: Mapping[str, Any], fields: FieldsConfig) -> str:
  """The format of one decoded item (see the module docstring)."""
  if fields.messages in item:
    return "messages"
  if fields.completion in item:
    return "prompt_completion"
  return "record"


def with_think(reasoning: str | None, content: str, spec: ReadSpec) -> str:
  """`content` preceded by the think block holding `reasoning` (none when there is none)."""
  if not reasoning:
    return content
  return f"{spec.think_open}\n{reasoning.strip()}\n{spec.think_close}\n{content.lstrip()}"


def _reasoning(item: Mapping[str, Any], fields: FieldsConfig) -> str | None:
  for name in fields.reasoning:
    value = item.get(name)
    if value not in (None, ""):
      if not isinstance(value, str):
        raise InvalidRecord(f"bad_type_{name}")
      return value
  return None


def _content(message: Mapping[str, Any]) -> str:
  """A turn's text: a string, or a list of text parts (Hugging Face multimodal shape)."""
  content = message.get("content")
  if isinstance(content, list):
    parts = [p.get("text") if isinstance(p, Mapping) and p.get("type") == "text" else None
             for p in content]
    if any(not isinstance(p, str) for p in parts):
      raise InvalidRecord("non_text_content")
    content = "".join(parts)
  return "" if content is None else content


def _split_turns(messages: Any, fields: FieldsConfig, prompt_only: bool
                 ) -> tuple[str, str, Mapping[str, Any] | None]:
  """Chat turns -> (system text, user text, assistant turn): system*, user, assistant; in a
  prompt set the assistant turn may be missing (None)."""
  if messages is None:
    raise InvalidRecord(f"missing_{fields.messages}")
  if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
    raise InvalidRecord(f"bad_type_{fields.messages}")
  roles = [m.get("role") for m in messages]
  if any(r not in (*SYSTEM_ROLES, "user", "assistant") for r in roles):
    raise InvalidRecord("unknown_role")
  first_turn = next((i for i, r in enumerate(roles) if r not in SYSTEM_ROLES), len(roles))
  if any(r in SYSTEM_ROLES for r in roles[first_turn:]):
    raise InvalidRecord("system_after_user")
  turns = roles[first_turn:]
  prompt_alone = prompt_only and turns[-1:] == ["user"]
  if not prompt_alone and turns[-1:] != ["assistant"]:
    raise InvalidRecord("missing_user" if prompt_only and not turns else "missing_assistant")
  if turns != (["user"] if prompt_alone else ["user", "assistant"]):
    # One exchange per Record: a history has no place in it (nor in the chat template).
    raise InvalidRecord("missing_user" if "user" not in turns else "multi_turn")
  system = "\n\n".join(text(_content(m), "system") for m in messages[:first_turn])
  user = text(_content(messages[first_turn]), "user")
  return system, user, None if prompt_alone else messages[first_turn + 1]


def _from_turns(messages: Any, fields: FieldsConfig,
                spec: ReadSpec) -> tuple[str, str, dict[str, Any]]:
  system, prompt, assistant = _split_turns(messages, fields, spec.prompt_only)
  response = "" if assistant is None else with_think(
      _reasoning(assistant, fields), text(_content(assistant), "assistant"), spec)
  return prompt, response, {"system": system} if system else {}


def _prompt_alone(prompt: Any, spec: ReadSpec) -> tuple[str, str, dict[str, Any]]:
  """A prompt set's prompt field with no response: text, or turns ending in the user's (TRL's
  conversational prompt-only shape)."""
  if isinstance(prompt, list):
    user, response, meta = _from_turns(prompt, spec.fields, spec)
    if response:
      raise InvalidRecord(f"assistant_in_{spec.fields.prompt}")
    return user, "", meta
  return text(prompt, spec.fields.prompt), "", {}


def _absent(value: Any) -> bool:
  return value is None or value == "" or value == []


def _messages(item: Mapping[str, Any], spec: ReadSpec) -> tuple[str, str, dict, tuple[str, ...]]:
  fields = spec.fields
  return (*_from_turns(item.get(fields.messages), fields, spec), (fields.messages,))


def _prompt_completion(item: Mapping[str, Any],
                       spec: ReadSpec) -> tuple[str, str, dict, tuple[str, ...]]:
  fields = spec.fields
  prompt, completion = item.get(fields.prompt), item.get(fields.completion)
  consumed = (fields.prompt, fields.completion, *fields.reasoning)
  if spec.prompt_only and _absent(completion):
    return (*_prompt_alone(prompt, spec), consumed)
  if isinstance(prompt, list) or isinstance(completion, list):  # TRL's conversational shape
    if not isinstance(prompt, list) or not isinstance(completion, list):
      raise InvalidRecord(f"bad_type_{fields.completion}")
    return (*_from_turns(prompt + completion, fields, spec), consumed)
  prompt = text(prompt, fields.prompt)
  response = with_think(_reasoning(item, fields), text(completion, fields.completion), spec)
  return prompt, response, {}, consumed


def _flat(item: Mapping[str, Any], spec: ReadSpec) -> tuple[str, str, dict, tuple[str, ...]]:
  fields = spec.fields
  consumed = (fields.prompt, fields.response, *fields.reasoning)
  if spec.prompt_only and _absent(item.get(fields.response)):
    return (*_prompt_alone(item.get(fields.prompt), spec), consumed)
  prompt = text(item.get(fields.prompt), fields.prompt)
  response = text(item.get(fields.response), fields.response)
  response = with_think(_reasoning(item, fields), response, spec)
  return prompt, response, {}, consumed


_READERS = {"messages": _messages, "prompt_completion": _prompt_completion, "record": _flat}


def _optional_text(item: Mapping[str, Any], name: str, default: str) -> str:
  value = item.get(name)
  return default if value in (None, "") else text(value, name)


def to_record(raw: str | bytes | Mapping[str, Any], spec: ReadSpec, *, stem: str) -> Record:
  """One input item -> Record, in `spec.format` (or its detected format); `stem` is the input
  file name's stem (the domain/source default). Raises InvalidRecord(reason)."""
  item = decode(raw)
  fields = spec.fields
  kind = detect(item, fields) if spec.format == "auto" else spec.format
  prompt, response, meta, consumed = _READERS[kind](item, spec)
  consumed = {*consumed, fields.answer, fields.tests, fields.domain, fields.source}
  meta = {**{k: v for k, v in item.items() if k not in consumed}, **meta}
  return make_record(prompt=prompt, response=response,
                     domain=_optional_text(item, fields.domain, spec.default_domain or stem),
                     source=_optional_text(item, fields.source, spec.default_source or stem),
                     answer=item.get(fields.answer), tests=item.get(fields.tests), meta=meta)


def stem(path: str) -> str:
  """`data/gsm8k.train.jsonl` -> `gsm8k.train` (the default domain and source of its items)."""
  name = os.path.basename(path)
  for suffix in (".jsonl", ".parquet", ".array_record", ".arrayrecord"):
    name = name.removesuffix(suffix)
  return name
