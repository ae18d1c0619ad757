"""Discrete thinking: chain of thought in tokens, part of the completion (and no-CoT: none at all)."""

from __future__ import annotations

from latentrl.models.thinking.recurrent import LatentForwardThinking


class DiscreteThinking(LatentForwardThinking):
    """Chain of thought: ``question "\\n" step_1 "\\n" ... "### " answer <eos>``."""

    name = "discrete"
    latent_markers = False
    keeps_steps = True


class NoCoTThinking(LatentForwardThinking):
    """No thinking: ``question "\\n" "### " answer <eos>`` (the worked steps are dropped)."""

    name = "nocot"
    latent_markers = False
    keeps_steps = False
