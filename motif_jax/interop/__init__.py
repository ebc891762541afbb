"""Interoperability with other checkpoint formats (Hugging Face safetensors)."""

from motif_jax.interop.hf import (TokenizerFiles, copy_tokenizer_files, export_checkpoint,
                                  find_tokenizer, import_checkpoint, load, load_config, save)
from motif_jax.interop.layouts import FAMILIES

__all__ = [
    "FAMILIES", "TokenizerFiles", "copy_tokenizer_files", "export_checkpoint", "find_tokenizer",
    "import_checkpoint", "load", "load_config", "save",
]
