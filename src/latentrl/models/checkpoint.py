"""Checkpoints: HF directories (safetensors) plus ``latentrl.json``, written atomically, verified on load.

A checkpoint directory loads with plain ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained``. A resumable one also holds:

- ``trainer_state.json``: progress, the run it belongs to, Python/NumPy RNG states (plain JSON);
- ``optimizer.pt``: optimizer and scheduler state dicts and torch RNG states, tensors only, read with
  ``torch.load(weights_only=True)`` so that a crafted file cannot run code;
- ``manifest.json``, written last: the size and SHA-256 of every other file. A checkpoint whose
  manifest is missing or whose files differ from it is damaged (``verify_checkpoint``).

Nothing here unpickles: weights are safetensors, state is JSON or tensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

from latentrl.models.build import CheckpointError, ban_layout_tokens, load_model
from latentrl.models.layout import ThinkingConfig

TRAINER_STATE = "trainer_state.json"
TENSOR_STATE = "optimizer.pt"
MANIFEST = "manifest.json"


class CheckpointStateError(CheckpointError):
    """A checkpoint's trainer state cannot be read (damaged, or not written by latentrl)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    entries = {str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (directory / MANIFEST).write_text(json.dumps(entries, indent=1) + "\n")


def save_checkpoint(directory, model, tokenizer, thinking: ThinkingConfig, trainer_state: dict | None = None,
                    tensor_state: dict | None = None) -> Path:  # fmt: skip
    """Write to ``<directory>.tmp``, add the manifest, then swap it in: a crash never leaves a
    half-written checkpoint under the final name (``recover_swap`` mends a crash mid-swap)."""
    from latentrl.models.build import quiet_hf

    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with quiet_hf():
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    thinking.save(tmp)
    if trainer_state is not None:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1) + "\n")
    if tensor_state is not None:
        torch.save(tensor_state, tmp / TENSOR_STATE)
    _write_manifest(tmp)
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
    os.replace(tmp, directory)
    if old.exists():
        shutil.rmtree(old)
    return directory


def recover_swap(directory) -> None:
    """Undo a crash in the middle of ``save_checkpoint``'s swap: ``X.old`` back to ``X`` when ``X`` is
    missing; a leftover ``X.tmp`` (never completed) is deleted."""
    directory = Path(directory)
    old, tmp = directory.with_name(directory.name + ".old"), directory.with_name(directory.name + ".tmp")
    if old.is_dir() and not directory.exists():
        os.replace(old, directory)
    elif old.is_dir():
        shutil.rmtree(old)
    if tmp.is_dir():
        shutil.rmtree(tmp)


def verify_checkpoint(directory) -> str | None:
    """Why ``directory`` is not an intact checkpoint, or ``None`` when every file matches its manifest."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return "no manifest.json (the checkpoint was not completely written)"
    try:
        entries = json.loads(manifest.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable manifest.json ({err})"
    for name, entry in entries.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            return f"{name} differs from the manifest (damaged or changed after writing)"
    return None


def load_checkpoint(directory, dtype: torch.dtype | None = None):
    """``(model, tokenizer, thinking)`` from a checkpoint directory or a hub id.

    ``latentrl.json`` is checked against the tokenizer and the embedding table (latent ids present,
    in range, the latent special tokens).
    """
    from latentrl.models.layout import validate_for_tokenizer

    text = str(directory)
    looks_local = text.startswith((".", "/", "~")) or text.count("/") != 1 or Path(text).exists()
    if looks_local and not Path(text).expanduser().is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {text}")
    if looks_local and not Path(text, "config.json").exists():
        raise FileNotFoundError(f"{text} is not a Hugging Face checkpoint (no config.json)")
    thinking = ThinkingConfig.load(directory) if Path(directory).is_dir() else ThinkingConfig()
    model, tokenizer = load_model(str(directory), dtype=dtype)
    ban_layout_tokens(model, tokenizer)
    validate_for_tokenizer(thinking, tokenizer, model.get_input_embeddings().num_embeddings, Path(directory))
    return model, tokenizer, thinking


def load_trainer_state(directory) -> dict | None:
    """``trainer_state.json`` of a checkpoint, or ``None`` when it has none."""
    path = Path(directory, TRAINER_STATE)
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointStateError(f"{path}: unreadable trainer state ({err})") from err
    if not isinstance(state, dict):
        raise CheckpointStateError(f"{path}: trainer state must be a JSON object")
    return state


def load_tensor_state(directory) -> dict:
    """``optimizer.pt`` of a checkpoint, read with ``weights_only=True`` (tensors and plain containers
    only: a pickled object that would run code is refused)."""
    path = Path(directory, TENSOR_STATE)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError (zip), OSError ...
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused:
            raise CheckpointStateError(f"{path}: refused, it holds a pickled {refused.group(1)} that would run code "
                                       "when loaded; delete this checkpoint") from err  # fmt: skip
        first = (text.strip().splitlines() or [""])[0]
        raise CheckpointStateError(f"{path}: cannot be read safely ({type(err).__name__}: {first})") from err
