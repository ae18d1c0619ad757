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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from latentrl.models.build import CheckpointError
from latentrl.models.thinking.coconut import stage_plan  # noqa: F401  (the curriculum lives with its mode)
from latentrl.models.tokenizer import END_LATENT, LATENT, START_LATENT
from latentrl.tasks.base import DataError

ThinkingMode = Literal["discrete", "nocot", "coconut", "soft"]
THINKING_MODES = ("discrete", "nocot", "coconut", "soft")  # every mode the format names
IMPLEMENTED_MODES = THINKING_MODES
LATENT_MODES = ("coconut",)  # modes whose prompt holds the latent markers
LATENT_ID_KEYS = {"start_latent_token_id": START_LATENT, "latent_token_id": LATENT, "end_latent_token_id": END_LATENT}
ANSWER_PREFIX = "### "
METADATA_FILE = "latentrl.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def thinking_field_error(fields: Mapping[str, Any]) -> str | None:
    """The first fault of a ``ThinkingConfig``'s field values, as one line naming the key, or None.

    Checks types and ranges only; whether the latent ids fit a tokenizer and an embedding table is
    :func:`validate_for_tokenizer`'s job.
    """
    mode = fields.get("thinking_mode")
    if mode not in IMPLEMENTED_MODES:
        return f"thinking_mode must be one of {', '.join(IMPLEMENTED_MODES)}, got {mode!r}"
    for key in LATENT_ID_KEYS:
        value = fields.get(key)
        if value is not None and (not _is_int(value) or value < 0):
            return f"{key} must be a non-negative integer token id or null, got {value!r}"
    minimum = {"thoughts_per_step": 1, "num_latents": 0}
    for key, low in minimum.items():
        value = fields.get(key)
        if not _is_int(value) or value < low:
            return f"{key} must be an integer >= {low}, got {value!r}"
    for key in ("curriculum_stage", "max_latent_stage"):
        value = fields.get(key)
        if value is not None and (not _is_int(value) or value < 0):
            return f"{key} must be a non-negative integer or null, got {value!r}"
    for key in ("answer_prefix", "prompt_layout", "completion_layout"):
        if not isinstance(fields.get(key), str):
            return f"{key} must be a string, got {fields.get(key)!r}"
    return soft_field_error(fields)


def soft_field_error(fields: Mapping[str, Any]) -> str | None:
    """The first fault of the soft thinking fields, or None."""
    checks = {
        "soft_top_k": lambda v: _is_int(v) and v >= 1, "soft_top_p": lambda v: _is_number(v) and 0 < v <= 1,
        "soft_temperature": lambda v: _is_number(v) and v > 0, "cold_stop_entropy": lambda v: _is_number(v) and v >= 0,
        "cold_stop_window": lambda v: _is_int(v) and v >= 1,
        "max_thinking_steps": lambda v: v is None or (_is_int(v) and v >= 0),
        "end_of_thinking": lambda v: v is None or (isinstance(v, str) and v != ""),
        "end_of_thinking_id": lambda v: v is None or (_is_int(v) and v >= 0),
    }  # fmt: skip
    needs = {"soft_top_k": "an integer >= 1", "soft_top_p": "in (0, 1]", "soft_temperature": "> 0",
             "cold_stop_entropy": ">= 0", "cold_stop_window": "an integer >= 1", "max_thinking_steps": "null or an integer >= 0",
             "end_of_thinking": "null or a non-empty token string", "end_of_thinking_id": "null or a token id"}  # fmt: skip
    for key, ok in checks.items():
        if key in fields and not ok(fields[key]):
            return f"{key} must be {needs[key]}, got {fields[key]!r}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    # soft thinking (thinking_mode "soft"): DESIGN §2.3
    soft_top_k: int = 5  # ids kept per thinking step
    soft_top_p: float = 0.95  # then the smallest prefix of them reaching this mass
    soft_temperature: float = 1.0  # T of p = softmax(logits / T) at thinking steps
    max_thinking_steps: int | None = None  # cap on soft steps (None: the completion length cap)
    end_of_thinking: str | None = None  # the token that ends thinking (None: the first token of answer_prefix)
    end_of_thinking_id: int | None = None  # its id in the tokenizer (set by with_soft)
    cold_stop_entropy: float = 0.0  # Cold Stop: end thinking after cold_stop_window steps under this entropy (0: off)
    cold_stop_window: int = 256

    def __post_init__(self) -> None:
        error = thinking_field_error(asdict(self))
        if error:
            raise ValueError(f"ThinkingConfig: {error}")

    @classmethod
    def from_tokenizer(cls, tokenizer, thinking_mode: str, thoughts_per_step: int = 1, num_latents: int = 0):
        ids = tokenizer.convert_tokens_to_ids([START_LATENT, LATENT, END_LATENT])
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise ValueError("tokenizer lacks the latent special tokens; call add_latent_tokens first")
        return cls(thinking_mode, *ids, thoughts_per_step=thoughts_per_step, num_latents=num_latents)

    def with_soft(self, tokenizer, **keys) -> "ThinkingConfig":
        """This config in soft thinking mode, with the soft keys given, ``end_of_thinking`` resolved to
        its token id (ValueError naming the string when the tokenizer does not encode it as one token)."""
        from dataclasses import replace

        cfg = replace(self, thinking_mode="soft", **{k: v for k, v in keys.items() if v is not None})
        text = cfg.end_of_thinking or cfg.answer_prefix
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if cfg.end_of_thinking is None:  # the answer prefix's first token ('#' by characters, '###' for a BPE)
            ids = ids[:1]
            text = tokenizer.decode(ids)
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise ValueError(f"end_of_thinking {text!r} is not one token of this tokenizer (it encodes to {ids}); "
                             "give a string that is a single token, e.g. '</think>' for a chat model")  # fmt: skip
        return replace(cfg, end_of_thinking_id=ids[0])

    def soft_settings(self):
        """The soft thinking loop's settings (``latentrl.models.thinking.SoftSettings``)."""
        from latentrl.models.thinking.soft import SoftSettings

        if self.end_of_thinking_id is None:
            raise ValueError("soft thinking needs end_of_thinking_id: build the config with ThinkingConfig.with_soft")
        return SoftSettings(self.soft_top_k, self.soft_top_p, self.soft_temperature, self.max_thinking_steps,
                            self.end_of_thinking_id, self.cold_stop_entropy, self.cold_stop_window)  # fmt: skip

    def save(self, directory: str | os.PathLike) -> None:
        Path(directory, METADATA_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ThinkingConfig":
        """Read ``<directory>/latentrl.json``; a directory without one is a plain HF model (discrete).

        Raises :class:`CheckpointError` naming the file (and key) for unreadable or malformed JSON,
        a JSON value that is not an object, unknown keys, a missing ``thinking_mode``, or a field
        of the wrong type or range (see :func:`thinking_field_error`). Other missing keys take
        their defaults (files written before those keys existed).
        """
        path = Path(directory, METADATA_FILE)
        if not path.exists():
            return cls()  # a plain HF model: discrete thinking
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})") from err
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: cannot read ({err})") from err
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a JSON object, got a {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise CheckpointError(f"{path}: unknown keys {sorted(unknown)}")
        if "thinking_mode" not in data:
            raise CheckpointError(f"{path}: missing key 'thinking_mode' (one of {', '.join(IMPLEMENTED_MODES)})")
        error = thinking_field_error({**asdict(cls()), **data})
        if error:
            raise CheckpointError(f"{path}: {error}")
        return cls(**data)


def validate_for_tokenizer(thinking: ThinkingConfig, tokenizer, vocab_size: int, path: str | os.PathLike) -> None:
    """Check that ``thinking``'s latent ids fit the checkpoint's tokenizer and embedding table.

    Latent modes (coconut) need all three ids; in every mode an id that is set must lie in
    ``[0, vocab_size)`` (the model's input embedding rows) and be the tokenizer's special token of
    that name (``<|start-latent|>``, ``<|latent|>``, ``<|end-latent|>``), not an ordinary token.
    ``path`` is the checkpoint directory; errors are :class:`CheckpointError` naming its
    ``latentrl.json`` and the key.
    """
    where = Path(path, METADATA_FILE)
    special = set(tokenizer.all_special_ids)
    for key, token in LATENT_ID_KEYS.items():
        value = getattr(thinking, key)
        if value is None:
            if thinking.thinking_mode in LATENT_MODES:
                raise CheckpointError(f"{where}: thinking_mode {thinking.thinking_mode!r} needs {key} (the id of "
                                      f"{token}), got null")  # fmt: skip
            continue
        if not 0 <= value < vocab_size:
            raise CheckpointError(f"{where}: {key} {value} is outside the model's embedding table "
                                  f"(vocab_size {vocab_size})")  # fmt: skip
        actual = tokenizer.convert_ids_to_tokens(value)
        if actual != token:
            raise CheckpointError(f"{where}: {key} {value} is {actual!r} in the tokenizer, not {token!r}")
        if value not in special:
            raise CheckpointError(f"{where}: {key} {value} ({token}) is an ordinary token of the tokenizer, "
                                  "not a special token; add it with add_latent_tokens")  # fmt: skip


def model_context_length(model) -> int | None:
    """The most positions the model takes: ``n_positions`` or ``max_position_embeddings`` of its
    (text) config, or None when the config states neither."""
    config = getattr(model, "config", model)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if _is_int(value) and value > 0:
            return value
    return None


def check_fits_context(
    lengths: Sequence[int], max_positions: int | None, where: str, what: str = "prompt + completion"
) -> None:
    """Raise :class:`DataError` naming the first example (0-based index into ``lengths``) whose
    token count exceeds ``max_positions``; nothing to check when ``max_positions`` is None.

    ``where`` names the data (e.g. ``"train.jsonl"``), ``what`` what was counted (e.g.
    ``"prompt + max_new_tokens"`` before generation). A longer input would fail deep in the forward
    (GPT-2: IndexError in its position table) or silently run past a rotary model's trained range.
    """
    if max_positions is None:
        return
    over = [i for i, n in enumerate(lengths) if n > max_positions]
    if over:
        i = over[0]
        more = f" ({len(over) - 1} more examples are too long)" if len(over) > 1 else ""
        raise DataError(f"{where} example {i}: {what} is {lengths[i]} tokens but the model's context is "
                        f"{max_positions} (max_position_embeddings); shorten it or raise max_length{more}")  # fmt: skip


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
    if _mode(cfg).latent_markers:
        k = cfg.num_latents if num_latents is None else num_latents
        ids = ids + [cfg.start_latent_token_id] + [cfg.latent_token_id] * k + [cfg.end_latent_token_id]
    return ids


def _mode(cfg: ThinkingConfig):
    from latentrl.models.thinking import thinking_mode

    return thinking_mode(cfg.thinking_mode)


def encode_example(
    tokenizer, question: str, steps, answer: str, cfg: ThinkingConfig, removed_steps: int = 0, num_latents: int = 0
) -> Encoded:
    """Encode a training example: the first ``removed_steps`` language steps dropped and
    ``num_latents`` thoughts in the prompt (latent modes); ``nocot`` drops every step."""
    steps = list(steps)
    mode = _mode(cfg)
    if not mode.keeps_steps:
        steps = []
    elif mode.latent_markers:
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
