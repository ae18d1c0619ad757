"""Thinking modes over any Hugging Face causal LM: discrete, coconut (and soft, BuPO read-outs later)."""

from latentrl.models.build import (
    MODEL_FAMILIES,
    IncompatibleModelError,
    add_latent_tokens,
    build_tiny_model,
    check_latent_support,
    load_model,
)
from latentrl.models.checkpoint import load_checkpoint, save_checkpoint
from latentrl.models.latent import Generation, generate, latent_forward, naive_generate
from latentrl.models.layout import ThinkingConfig, collate, encode_example, encode_prompt
from latentrl.models.tokenizer import build_char_tokenizer

__all__ = [
    "MODEL_FAMILIES", "Generation", "IncompatibleModelError", "ThinkingConfig", "add_latent_tokens",
    "build_char_tokenizer", "build_tiny_model", "check_latent_support", "collate", "encode_example",
    "encode_prompt", "generate", "latent_forward", "load_checkpoint", "load_model", "naive_generate",
    "save_checkpoint",
]  # fmt: skip
