"""The typed-config boundary: a frozen dataclass from an ml_collections section.

Every field must be given (defaults live in configs/, not here); unknown and missing fields,
and errors of nested sections, name the dotted config path (`data.filters.verify.methods`).
A section's own checks name its usual path (its class attribute `CONFIG_PATH`, e.g.
`data.toy`); where a config holds it elsewhere (`toy` in configs/evaluate.py) the message is
rewritten to the path the user typed.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from typing import Any


def build(cls: type, config: Mapping[str, Any], path: str) -> Any:
  """Recursively build dataclass `cls` from a mapping, naming `path.<field>` in errors."""
  values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  hints = typing.get_type_hints(cls)
  known = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(values) - set(known))
  if unknown:
    raise ValueError(f"unknown config fields: {', '.join(f'{path}.{u}' for u in unknown)}")
  missing = [k for k in known if k not in values]
  if missing:
    raise ValueError(f"missing config fields: {', '.join(f'{path}.{m}' for m in missing)}")
  kwargs = {}
  for name in known:
    value = values[name]
    if dataclasses.is_dataclass(hints[name]) and not isinstance(value, hints[name]):
      if not isinstance(value, Mapping) and not hasattr(value, "to_dict"):
        raise ValueError(f"{path}.{name} must be a mapping, got {value!r}")
      value = build(hints[name], value, f"{path}.{name}")
    elif isinstance(value, list):
      value = tuple(value)
    kwargs[name] = value
  try:
    return cls(**kwargs)
  except ValueError as e:
    usual = getattr(cls, "CONFIG_PATH", None)
    if not usual or usual == path:
      raise
    message = re.sub(rf"(?<![\w.]){re.escape(usual)}(?=[.= ])", path, str(e))
    raise ValueError(message) from e
