"""Typed, validated data configuration: the boundary between `config.data` and the library.

`DataConfig.from_config_dict(config.data)` requires every field (defaults live in
`configs/common.py: data`), converts the comma-separated list fields to tuples and raises a
`ValueError` whose message names the offending `data.<field>`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from motif_jax import typed_config
from motif_jax.data.template import ChatTemplate
from motif_jax.data.toy_problems import DOMAINS, LADDERS

VERIFY_METHODS = ("exact", "math_verify", "tests")
# Input record formats (motif_jax.data.formats); "auto" detects the format of every item.
RECORD_FORMATS = ("auto", "record", "messages", "prompt_completion")
FILTER_NAMES = ("format", "verify", "verbosity", "granularity", "style", "dedup")


def _fail(path: str, message: str) -> None:
  raise ValueError(f"{path} {message}")


def _split(value: str | tuple[str, ...]) -> tuple[str, ...]:
  if isinstance(value, str):
    return tuple(s.strip() for s in value.split(",") if s.strip())
  return tuple(value)


def _positive(obj: Any, path: str, *names: str) -> None:
  for name in names:
    value = getattr(obj, name)
    if isinstance(value, bool) or not value > 0:
      _fail(f"{path}.{name}={value!r}", "must be positive")


def _band(obj: Any, path: str, low: str, high: str) -> None:
  if getattr(obj, low) > getattr(obj, high):
    _fail(f"{path}.{low}={getattr(obj, low)!r}", f"exceeds {path}.{high}={getattr(obj, high)!r}")


@dataclasses.dataclass(frozen=True)
class TraceConfig:
  """How a response's think block is cut into steps."""

  step_split: str  # regex between steps
  numbered_step: str  # regex (case-insensitive) that a numbered step starts with

  def __post_init__(self):
    for name in ("step_split", "numbered_step"):
      try:
        re.compile(getattr(self, name))
      except re.error as e:
        _fail(f"data.trace.{name}={getattr(self, name)!r}", f"is not a valid regex: {e}")


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
  methods: tuple[tuple[str, str], ...]  # (domain, method) pairs, from "domain=method,..."
  default: str  # method for other domains; "" = drop them

  def __post_init__(self):
    if isinstance(self.methods, str):
      pairs = []
      for item in _split(self.methods):
        domain, sep, method = item.partition("=")
        if not sep:
          _fail(f"data.filters.verify.methods item {item!r}", "must be domain=method")
        pairs.append((domain.strip(), method.strip()))
      object.__setattr__(self, "methods", tuple(pairs))
    for domain, method in self.methods:
      if method not in VERIFY_METHODS:
        _fail(f"data.filters.verify.methods {domain}={method!r}",
              f"must be one of {VERIFY_METHODS}")
    if self.default and self.default not in VERIFY_METHODS:
      _fail(f"data.filters.verify.default={self.default!r}",
            f"must be '' or one of {VERIFY_METHODS}")

  def method_for(self, domain: str) -> str:
    return dict(self.methods).get(domain, self.default)


@dataclasses.dataclass(frozen=True)
class VerbosityConfig:
  min_tokens: int  # response tokens
  max_tokens: int
  min_ratio: float  # think tokens / final-answer tokens
  max_ratio: float

  def __post_init__(self):
    _positive(self, "data.filters.verbosity", "max_tokens", "max_ratio")
    _band(self, "data.filters.verbosity", "min_tokens", "max_tokens")
    _band(self, "data.filters.verbosity", "min_ratio", "max_ratio")


@dataclasses.dataclass(frozen=True)
class GranularityConfig:
  min_steps: int
  max_steps: int
  min_step_tokens: float  # mean tokens per step
  max_step_tokens: float

  def __post_init__(self):
    _positive(self, "data.filters.granularity", "max_steps", "max_step_tokens")
    _band(self, "data.filters.granularity", "min_steps", "max_steps")
    _band(self, "data.filters.granularity", "min_step_tokens", "max_step_tokens")


@dataclasses.dataclass(frozen=True)
class StyleConfig:
  max_distance: float  # max |z| of any feature against the reference profile
  min_std: float  # floor of each feature's std
  min_format_rate: float  # format traits this common in the reference are required
  nll_checkpoint: str  # target model params dir for the NLL feature; "" = off
  nll_batch_size: int

  def __post_init__(self):
    _positive(self, "data.filters.style", "max_distance", "min_std", "nll_batch_size")
    if not 0 < self.min_format_rate <= 1:
      _fail(f"data.filters.style.min_format_rate={self.min_format_rate!r}", "must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class DedupConfig:
  shingle_chars: int
  num_perm: int
  bands: int
  threshold: float  # estimated Jaccard similarity that makes a near duplicate

  def __post_init__(self):
    _positive(self, "data.filters.dedup", "shingle_chars", "num_perm", "bands")
    if self.num_perm % self.bands:
      _fail(f"data.filters.dedup.num_perm={self.num_perm}",
            f"must be a multiple of data.filters.dedup.bands={self.bands}")
    if not 0 < self.threshold <= 1:
      _fail(f"data.filters.dedup.threshold={self.threshold!r}", "must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  order: tuple[str, ...]  # filter names, applied in this order
  verify: VerifyConfig
  verbosity: VerbosityConfig
  granularity: GranularityConfig
  style: StyleConfig
  dedup: DedupConfig

  def __post_init__(self):
    object.__setattr__(self, "order", _split(self.order))
    for name in self.order:
      if name not in FILTER_NAMES:
        _fail(f"data.filters.order item {name!r}", f"must be one of {FILTER_NAMES}")
    if len(set(self.order)) != len(self.order):
      _fail(f"data.filters.order={','.join(self.order)!r}", "repeats a filter")


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  CONFIG_PATH: ClassVar[str] = "data.toy"  # error messages; see typed_config.build
  seed: int
  domains: tuple[str, ...]  # from "arith,lists,code" (motif_jax.data.toy_problems.DOMAINS)
  problems: int  # per domain
  min_steps: int  # difficulty = number of operations
  max_steps: int
  error_rate: float  # misaligned teacher: wrong answers
  format_error_rate: float  # misaligned teacher: broken think block or answer
  duplicate_rate: float
  reference_size: int  # per domain
  heldout_per_difficulty: int  # per domain and difficulty
  ladder: str = "standard"  # number ranges: a name of motif_jax.data.toy_problems.LADDERS

  def __post_init__(self):
    if self.ladder not in LADDERS:
      _fail(f"data.toy.ladder={self.ladder!r}", f"must be one of {sorted(LADDERS)}")
    object.__setattr__(self, "domains", _split(self.domains))
    if not self.domains or len(set(self.domains)) != len(self.domains):
      _fail(f"data.toy.domains={','.join(self.domains)!r}", "must name distinct domains")
    for domain in self.domains:
      if domain not in DOMAINS:
        _fail(f"data.toy.domains item {domain!r}", f"must be one of {DOMAINS}")
    _positive(self, "data.toy", "problems", "min_steps", "reference_size")
    _band(self, "data.toy", "min_steps", "max_steps")
    for name in ("error_rate", "format_error_rate", "duplicate_rate"):
      if not 0 <= getattr(self, name) <= 1:
        _fail(f"data.toy.{name}={getattr(self, name)!r}", "must be in [0, 1]")


@dataclasses.dataclass(frozen=True)
class FieldsConfig:
  """The input field that holds each part of a record (`data.fields.prompt=problem`, ...)."""
  CONFIG_PATH: ClassVar[str] = "data.fields"  # error messages; see typed_config.build

  prompt: str  # user text (record format), or the prompt (prompt_completion)
  response: str  # think block + final answer (record format)
  answer: str  # reference final answer
  tests: str  # unit tests of code records (a string or a list of strings)
  domain: str
  source: str
  messages: str  # the chat turns (messages format)
  completion: str  # the completion (prompt_completion format)
  reasoning: tuple[str, ...]  # fields tried in order for a separate think block, e.g.
  # "reasoning_content,reasoning" (on the assistant turn, or top-level); () = none

  def __post_init__(self):
    object.__setattr__(self, "reasoning", _split(self.reasoning))
    for field in dataclasses.fields(self):
      if field.name != "reasoning" and not getattr(self, field.name):
        _fail(f"data.fields.{field.name}", "must name an input field")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Everything the data stage needs; see configs/common.py for the meaning of each field."""

  inputs: tuple[str, ...]  # paths, globs, or toy[:aligned|:misaligned]
  format: str  # one of RECORD_FORMATS
  fields: FieldsConfig
  default_domain: str  # for items without a domain; "" = the file name's stem
  default_source: str  # for items without a source; "" = the file name's stem
  reference: tuple[str, ...]  # target-model reference sample; () = no style filter possible
  tokenizer: str  # "" = byte-level
  template: ChatTemplate
  trace: TraceConfig
  filters: FilterConfig
  toy: ToyConfig
  filter_on_load: bool
  seq_len: int  # tokens per packed row
  global_batch_size: int  # rows per step, all processes
  seed: int
  shuffle: bool
  num_epochs: int  # 0 = forever
  packing_bins: int
  workers: int
  worker_buffer: int
  prefetch: int

  def __post_init__(self):
    object.__setattr__(self, "inputs", _split(self.inputs))
    object.__setattr__(self, "reference", _split(self.reference))
    if not self.inputs:
      _fail("data.inputs", "must name at least one file, glob or 'toy'")
    if self.format not in RECORD_FORMATS:
      _fail(f"data.format={self.format!r}", f"must be one of {RECORD_FORMATS}")
    _positive(self, "data", "seq_len", "global_batch_size", "packing_bins", "worker_buffer",
              "prefetch")
    for name in ("num_epochs", "workers"):
      if getattr(self, name) < 0:
        _fail(f"data.{name}={getattr(self, name)!r}", "must be >= 0")
    if "style" in self.filters.order and not self.reference:
      _fail("data.reference", "is empty but data.filters.order includes 'style'")

  @classmethod
  def from_config_dict(cls, config: Mapping[str, Any]) -> "DataConfig":
    """Build from `config.data` (a ConfigDict or dict); unknown or missing fields raise."""
    return typed_config.build(cls, config, "data")
