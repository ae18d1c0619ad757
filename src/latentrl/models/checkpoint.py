"""Checkpoints: HF directories (safetensors) plus ``latentrl.json``, written atomically.

A checkpoint directory loads with plain ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained``. Training state for resumption (optimizer, scheduler, RNG,
progress) lives in ``trainer_state.pt`` beside the weights.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from latentrl.models.build import load_model
from latentrl.models.layout import ThinkingConfig

TRAINER_STATE = "trainer_state.pt"


def save_checkpoint(directory, model, tokenizer, thinking: ThinkingConfig, trainer_state: dict | None = None) -> Path:
    """Write to ``<directory>.tmp`` and rename, so a crash never leaves a half-written checkpoint."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    thinking.save(tmp)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / TRAINER_STATE)
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old.exists():
        shutil.rmtree(old)
    return directory


def load_checkpoint(directory, dtype: torch.dtype | None = None):
    """``(model, tokenizer, thinking)`` from a checkpoint directory or a hub id."""
    text = str(directory)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1 or Path(text).exists()
    if looks_local and not Path(text).expanduser().is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {text}")
    if looks_local and not Path(text, "config.json").exists():
        raise FileNotFoundError(f"{text} is not a Hugging Face checkpoint (no config.json)")
    model, tokenizer = load_model(str(directory), dtype=dtype)
    thinking = ThinkingConfig.load(directory) if Path(directory).is_dir() else ThinkingConfig()
    return model, tokenizer, thinking


def load_trainer_state(directory) -> dict | None:
    path = Path(directory, TRAINER_STATE)
    return torch.load(path, weights_only=False) if path.exists() else None
