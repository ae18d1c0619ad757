"""Sequence layouts of the thinking modes and the ``latentrl.json`` that records them.

Layout of one example (DESIGN §2.1), ``k`` latent slots::

    question "\\n" <|start-latent|> <|latent|> x k <|end-latent|> step_{s+1} "\\n" ... "### " answer <eos>
    \\______________________ prompt ______________________________/ \\________ completion ___________/

``discrete`` (chain of thought) has no markers: ``question "\\n" step_1 "\\n" ... "### " answer <eos>``;
``nocot`` drops the steps. Only the completion is supervised (labels), as in the reference.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from latentrl.models.tokenizer import END_LATENT, LATENT, START_LATENT

ThinkingMode = Literal["discrete", "nocot", "coconut", "soft"]
THINKING_MODES = ("discrete", "nocot", "coconut", "soft")
ANSWER_PREFIX = "### "
METADATA_FILE = "latentrl.json"


@dataclass
class ThinkingConfig:
    """What a checkpoint needs beyond the HF files to be used as a thinking model (``latentrl.json``)."""

    thinking_mode: str = "discrete"
    start_latent_token_id: int | None = None
    latent_token_id: int | None = None
    end_latent_token_id: int | None = None
    thoughts_per_step: int = 1  # c: continuous thoughts that replace one language step
    num_latents: int = 0  # latent thoughts used at inference
    curriculum_stage: int | None = None  # Coconut stage the checkpoint was trained at (None: not a curriculum)
    max_latent_stage: int | None = None  # its curriculum's last stage (a stage past it removes every step)
    answer_prefix: str = ANSWER_PREFIX
    prompt_layout: str = field(
        default="question + '\\n' [+ <|start-latent|> + <|latent|> * num_latents + <|end-latent|>]"
    )
    completion_layout: str = "steps (each + '\\n', discrete mode) + '### ' + answer + eos"

    def __post_init__(self) -> None:
        if self.thinking_mode not in THINKING_MODES:
            raise ValueError(f"thinking_mode must be one of {THINKING_MODES}, got {self.thinking_mode!r}")

    @classmethod
    def from_tokenizer(cls, tokenizer, thinking_mode: str, thoughts_per_step: int = 1, num_latents: int = 0):
        ids = tokenizer.convert_tokens_to_ids([START_LATENT, LATENT, END_LATENT])
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise ValueError("tokenizer lacks the latent special tokens; call add_latent_tokens first")
        return cls(thinking_mode, *ids, thoughts_per_step=thoughts_per_step, num_latents=num_latents)

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory, METADATA_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ThinkingConfig":
        path = Path(directory, METADATA_FILE)
        if not path.exists():
            return cls()  # a plain HF model: discrete thinking
        data = json.loads(path.read_text())
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        return cls(**data)


@dataclass
class Encoded:
    """One tokenized example: ``ids [L]``, ``labels [L]`` (-100 off the completion), ``prompt_len``."""

    ids: list[int]
    labels: list[int]
    prompt_len: int
    num_latents: int


def prompt_text(question: str) -> str:
    return question + "\n"


def completion_text(steps: list[str] | tuple[str, ...], answer: str, answer_prefix: str = ANSWER_PREFIX) -> str:
    return "".join(s + "\n" for s in steps) + answer_prefix + answer


def encode_prompt(tokenizer, question: str, cfg: ThinkingConfig, num_latents: int | None = None) -> list[int]:
    """Token ids of the prompt, including the latent markers and placeholders of latent modes."""
    ids = tokenizer(prompt_text(question), add_special_tokens=False).input_ids
    if cfg.thinking_mode in ("coconut", "soft"):
        k = cfg.num_latents if num_latents is None else num_latents
        ids = ids + [cfg.start_latent_token_id] + [cfg.latent_token_id] * k + [cfg.end_latent_token_id]
    return ids


def stage_plan(num_steps: int, stage: int, max_latent_stage: int, c: int, pad_latent_to_max: bool) -> tuple[int, int]:
    """Curriculum stage -> ``(steps removed, latent thoughts)`` for an example of ``num_steps`` steps.

    Stage ``s <= max_latent_stage`` replaces the first ``s`` language steps by ``s * c`` thoughts;
    past ``max_latent_stage`` every step is removed and the thoughts stay at
    ``min(num_steps, max_latent_stage) * c``, or ``max_latent_stage * c`` with ``pad_latent_to_max``.
    """
    if stage > max_latent_stage:
        k = max_latent_stage if pad_latent_to_max else min(num_steps, max_latent_stage)
        return num_steps, k * c
    removed = min(stage, num_steps)
    return removed, removed * c


def encode_example(
    tokenizer, question: str, steps, answer: str, cfg: ThinkingConfig, removed_steps: int = 0, num_latents: int = 0
) -> Encoded:
    """Encode a training example: the first ``removed_steps`` language steps dropped and
    ``num_latents`` thoughts in the prompt (latent modes); ``nocot`` drops every step."""
    steps = list(steps)
    if cfg.thinking_mode == "nocot":
        steps = []
    elif cfg.thinking_mode in ("coconut", "soft"):
        steps = steps[removed_steps:]
    else:
        num_latents = 0
    prompt = encode_prompt(tokenizer, question, cfg, num_latents=num_latents)
    completion = tokenizer(completion_text(steps, answer, cfg.answer_prefix), add_special_tokens=False).input_ids
    completion = completion + [tokenizer.eos_token_id]
    return Encoded(prompt + completion, [-100] * len(prompt) + completion, len(prompt), num_latents)


@dataclass
class Batch:
    """A padded batch. Shapes: ``[B, L]`` for every field."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    latent_mask: torch.Tensor


def collate(encoded: list[Encoded], pad_id: int, latent_id: int | None) -> Batch:
    """Pad so that the prompt ends line up (left padding of the prompt, right padding of the rest).

    Aligning the prompt ends aligns the ``<|end-latent|>`` markers, so the latent slots of all rows
    fall into the fewest columns and the latent recurrence runs as few single-position passes as possible.
    """
    p_max = max(e.prompt_len for e in encoded)
    c_max = max(len(e.ids) - e.prompt_len for e in encoded)
    B, L = len(encoded), p_max + c_max
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    labels = torch.full((B, L), -100, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    for b, e in enumerate(encoded):
        start = p_max - e.prompt_len
        end = start + len(e.ids)
        ids[b, start:end] = torch.tensor(e.ids)
        labels[b, start:end] = torch.tensor(e.labels)
        attn[b, start:end] = 1
    latent = (ids == latent_id) & attn.bool() if latent_id is not None else torch.zeros_like(attn, dtype=torch.bool)
    return Batch(ids, attn, labels, latent)
