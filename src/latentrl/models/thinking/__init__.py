"""Thinking modes: what a model feeds back while it thinks, as sibling components.

| mode | a thinking step feeds back | recorded for replay | log-prob of a thinking step |
|---|---|---|---|
| ``discrete`` | the sampled token (chain of thought is part of the completion) | the tokens | the token's |
| ``nocot`` | (no thinking: the answer follows the question) | the tokens | the token's |
| ``coconut`` | the last hidden state of the previous position (``<|latent|>`` slots) | the noise seed | none (deterministic given the noise) |
| ``soft`` | a mixture of the top-k token embeddings | kept ids and perturbed logits | the Gumbel log-density (``soft_token_logprob``) |

Each mode implements :class:`ThinkingMode`; ``MODES`` registers them by the name ``latentrl.json``
records. A new mode is one file with its class plus one line here; an unknown name is an error.
"""

from __future__ import annotations

from typing import Protocol

import torch

from latentrl.models.thinking.soft import SoftSettings, SoftTrace, soft_token_logprob


class ThinkingMode(Protocol):
    """The seam between a thinking model and the rest of the library.

    ``record`` is a batch of rollouts (``latentrl.rollout.Rollout`` or ``latentrl.models.Generation``):
    prompt and completion ids and masks, ``latent_mask``, ``seeds`` and, for soft thinking, ``soft``.
    """

    name: str
    latent_markers: bool  # the prompt holds <|start-latent|> <|latent|> x num_latents <|end-latent|>
    keeps_steps: bool  # supervised completions keep the worked steps (before a curriculum removes any)

    def generate(self, model, prompts: list[list[int]], thinking, *, exploration, **decode):
        """Roll out ``prompts`` (token ids): thinking, then answer decoding -> ``Generation``."""

    def completion_logps(self, model, record, exploration, temperature: float, head, forward=None):
        """Log-probs ``[B, T]`` of every completion position under ``model`` (``head``'s policy: the full one or
        an internal layer's), thinking steps replayed from the record -> ``LogProbs``; ``forward`` runs the
        model's calls in place of ``model`` (the update's compiled forward)."""

    def loss_mask(self, record, exploration) -> torch.Tensor:
        """``[B, T]`` the completion positions that are actions of the policy."""


def thinking_mode(name: str) -> ThinkingMode:
    """The mode registered as ``name`` (ValueError listing the modes otherwise)."""
    from latentrl.models.thinking.coconut import CoconutThinking
    from latentrl.models.thinking.discrete import DiscreteThinking, NoCoTThinking
    from latentrl.models.thinking.soft_mode import SoftThinking

    modes = {"discrete": DiscreteThinking(), "nocot": NoCoTThinking(), "coconut": CoconutThinking(), "soft": SoftThinking()}
    if name not in modes:
        raise ValueError(f"unknown thinking_mode {name!r}; choose one of {', '.join(modes)}")
    return modes[name]


MODE_NAMES = ("discrete", "nocot", "coconut", "soft")

__all__ = ["MODE_NAMES", "SoftSettings", "SoftTrace", "ThinkingMode", "soft_token_logprob", "thinking_mode"]
