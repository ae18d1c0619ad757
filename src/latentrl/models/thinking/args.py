"""The config keys that choose and tune a thinking mode at run time (``latentrl eval`` and ``grpo``).

``None`` keeps what the checkpoint's ``latentrl.json`` says (and, for soft thinking, the defaults of
DESIGN §2.3: top-k 5, top-p 0.95, T 1). A discrete or no-CoT checkpoint can run in soft mode
(training-free Soft Thinking); a Coconut checkpoint cannot switch mode.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field, model_validator

from latentrl.config import Config

SOFT_KEYS = ("soft_top_k", "soft_top_p", "soft_temperature", "max_thinking_steps", "end_of_thinking",
             "cold_stop_entropy", "cold_stop_window")  # fmt: skip


class ThinkingArgs(Config):
    """Thinking mode and soft thinking keys."""

    thinking_mode: Literal["discrete", "nocot", "coconut", "soft"] | None = Field(
        None, description="Run the checkpoint in this mode (None: its latentrl.json); soft runs a discrete checkpoint "
                          "with soft thinking.",
    )  # fmt: skip
    soft_top_k: int | None = Field(None, ge=1, description="Soft thinking: ids kept per step (default 5).")
    soft_top_p: float | None = Field(None, gt=0, le=1, description="Soft thinking: nucleus over the kept ids (default 0.95).")
    soft_temperature: float | None = Field(None, gt=0, description="Soft thinking: T of p = softmax(logits / T) (default 1).")
    max_thinking_steps: int | None = Field(None, ge=0, description="Soft thinking: cap on thinking steps (default: the length cap).")
    end_of_thinking: str | None = Field(
        None, min_length=1, description="Soft thinking: the token that ends thinking, e.g. '</think>' (default: the "
                                        "first token of the answer prefix '### ').",
    )  # fmt: skip
    cold_stop_entropy: float | None = Field(None, ge=0, description="Cold Stop: entropy threshold (0: off, the default).")
    cold_stop_window: int | None = Field(None, ge=1, description="Cold Stop: consecutive low-entropy steps (default 256).")

    @model_validator(mode="after")
    def _soft_keys_need_soft(self):
        given = [k for k in SOFT_KEYS if getattr(self, k) is not None]
        if given and self.thinking_mode != "soft":
            raise ValueError(f"{', '.join(given)} apply to soft thinking: add thinking_mode=soft")
        return self

    def thinking_for(self, thinking, tokenizer, vocab_size: int):
        """The checkpoint's ``ThinkingConfig`` run as these keys ask (ValueError naming the key that cannot apply)."""
        mode = self.thinking_mode or thinking.thinking_mode
        given = {k: getattr(self, k) for k in SOFT_KEYS if getattr(self, k) is not None}
        if mode != "soft":
            if given:
                raise ValueError(f"{', '.join(given)} apply to soft thinking, but the checkpoint's thinking_mode is "
                                 f"{mode!r} (set thinking_mode=soft on a discrete checkpoint)")  # fmt: skip
            if mode == "discrete" and thinking.thinking_mode == "soft":  # a SofT-GRPO model is a plain LM too
                return dataclasses.replace(thinking, thinking_mode="discrete")
            if mode != thinking.thinking_mode:
                raise ValueError(f"a {thinking.thinking_mode!r} checkpoint cannot run as thinking_mode={mode!r}")
            return thinking
        if thinking.thinking_mode == "coconut":
            raise ValueError("thinking_mode=soft needs a discrete (chain-of-thought) checkpoint; this one is coconut")
        soft = thinking.with_soft(tokenizer, **given)
        if soft.soft_top_k > vocab_size:
            raise ValueError(f"soft_top_k={soft.soft_top_k} is larger than the vocabulary ({vocab_size} tokens)")
        return soft


class EngineArgs(Config):
    """How the rollout engine decodes (``latentrl eval`` and ``grpo``); none of them changes the tokens."""

    cache_implementation: Literal["dynamic", "static"] = Field(
        "dynamic", description="KV cache of generation: dynamic (grows; finished rows leave the batch) or static "
                               "(preallocated, fixed shapes: for torch_compile / CUDA graphs).",
    )  # fmt: skip
    torch_compile: bool = Field(False, description="Decode through torch.compile (with a static cache: CUDA graphs on a GPU).")
    compact_at: float = Field(
        0.25, ge=0, le=1, description="Finished rows leave the decoding batch once they are this fraction of it (0: never).",
    )  # fmt: skip

    def engine(self) -> dict:
        """The keyword arguments of ``generate`` these keys set."""
        return {"cache_implementation": self.cache_implementation, "torch_compile": self.torch_compile,
                "compact_at": self.compact_at}  # fmt: skip

