"""Thinking modes over any Hugging Face causal LM: discrete, coconut (and soft, BuPO read-outs later)."""

from latentrl.models.build import (
    MODEL_FAMILIES,
    CheckpointError,
    IncompatibleModelError,
    add_latent_tokens,
    build_tiny_model,
    check_latent_support,
    load_model,
    quiet_hf,
)
from latentrl.models.checkpoint import load_checkpoint, save_checkpoint
from latentrl.models.latent import Generation, generate, latent_forward, naive_generate
from latentrl.models.layout import (
    ThinkingConfig,
    check_fits_context,
    collate,
    encode_example,
    encode_prompt,
    model_context_length,
    validate_for_tokenizer,
)
from latentrl.models.tokenizer import build_char_tokenizer

__all__ = [
    "MODEL_FAMILIES", "CheckpointError", "Generation", "IncompatibleModelError", "ThinkingConfig",
    "add_latent_tokens", "build_char_tokenizer", "build_tiny_model", "check_fits_context", "check_latent_support",
    "collate", "encode_example", "encode_prompt", "generate", "latent_forward", "load_checkpoint", "load_model",
    "model_context_length", "naive_generate", "quiet_hf", "save_checkpoint", "validate_for_tokenizer",
]  # fmt: skip
