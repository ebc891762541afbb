"""Small data configs and hand-made records shared by the tests/test_data_*.py files."""

from configs import data as data_config
from motif_jax.data import curate
from motif_jax.data.config import DataConfig
from motif_jax.data.records import Record


def small_config(*, variant: str = "smoke", toy: dict | None = None, **data) -> DataConfig:
  """The smoke data config with overrides (`toy` fields and top-level `data` fields)."""
  config = data_config.get_config(variant).data
  config.toy.update(toy or {})
  config.update(data)
  return DataConfig.from_config_dict(config)


def record(response: str, *, prompt: str = "Start with 1. Add 2. What is the result?",
           answer: str | None = "3", domain: str = "arith", source: str = "hand",
           tests: tuple[str, ...] = ()) -> Record:
  return Record(prompt=prompt, response=response, domain=domain, source=source, answer=answer,
                tests=tests)


def scored(records, cfg: DataConfig):
  return curate.score_all(records, cfg, curate.make_tokenizer(cfg))
