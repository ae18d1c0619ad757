"""Coconut: continuous thoughts, the last hidden state fed back at each ``<|latent|>`` slot (DESIGN §2.1),
and the multi-stage curriculum that trains it.

Curriculum stage ``s <= max_latent_stage`` replaces the first ``s`` language steps by ``s * c``
thoughts; past ``max_latent_stage`` every step is removed and the thoughts stay at
``min(num_steps, max_latent_stage) * c``, or ``max_latent_stage * c`` with ``pad_latent_to_max``.
"""

from __future__ import annotations

from latentrl.models.thinking.recurrent import LatentForwardThinking


def stage_plan(num_steps: int, stage: int, max_latent_stage: int, c: int, pad_latent_to_max: bool) -> tuple[int, int]:
    """Curriculum stage -> ``(steps removed, latent thoughts)`` for an example of ``num_steps`` steps."""
    if stage > max_latent_stage:
        k = max_latent_stage if pad_latent_to_max else min(num_steps, max_latent_stage)
        return num_steps, k * c
    removed = min(stage, num_steps)
    return removed, removed * c


class CoconutThinking(LatentForwardThinking):
    """``question "\\n" <|start-latent|> <|latent|> x k <|end-latent|> remaining steps "### " answer <eos>``."""

    name = "coconut"
    latent_markers = True
    keeps_steps = True
