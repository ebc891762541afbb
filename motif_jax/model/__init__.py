"""The Motif-2 / Llama / Qwen2 / DiffLlama decoder as pure functions over a parameter tree."""

from motif_jax.model import accounting
from motif_jax.model.config import ModelConfig
from motif_jax.model.params import (ParamSpec, abstract_params, count_params, init_params,
                                    param_logical_axes, param_partition_specs, param_shardings,
                                    param_specs, validate_sharding)
from motif_jax.model.transformer import (REMAT_POLICIES, decode_embeddings, embed, forward,
                                         forward_logits, logits, positions_from_segments,
                                         unembed_matrix)

__all__ = [
    "ModelConfig", "accounting", "ParamSpec", "REMAT_POLICIES", "abstract_params", "count_params",
    "decode_embeddings", "embed", "forward", "forward_logits", "init_params", "logits",
    "param_logical_axes", "param_partition_specs", "param_shardings", "param_specs",
    "positions_from_segments", "unembed_matrix", "validate_sharding",
]
