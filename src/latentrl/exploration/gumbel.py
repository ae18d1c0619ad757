"""SofT-GRPO's noise source: Gumbel noise on the kept ids of each soft thinking step (DESIGN §2.3).

    g_i  ~ Gumbel(0, 1) = -log(-log u_i), clamped to [-1.5, 3]     u from the seeded stream
    g'_i = log(p~_i + 1e-6) + g_i                                 the perturbed logits, recorded
    y'   = softmax(g' / tau)                                      the mixture weights (tau = gumbel_tau)

``u`` is drawn from the shared stream keyed by (rollout seed, ``gumbel``, 0, step), so a rollout's
noise replays bit for bit. Ids dropped by top-p (``p~ = 0``) get ``g' = -inf``.

Shape legend: ``B`` rows, ``k`` kept ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentrl.exploration.none import NoExploration
from latentrl.exploration.stream import SITE_IDS, open_uniform


def gumbel_noise(seeds: torch.Tensor, step: int, width: int, clamp: tuple[float, float] = (-1.5, 3.0)) -> torch.Tensor:
    """Clamped standard Gumbel draws ``[B, width]`` (float32) from ``seeds [B]`` at soft step ``step``."""
    u = open_uniform(seeds, SITE_IDS["gumbel"], 0, step, width)
    return (-torch.log(-torch.log(u))).clamp(*clamp)


@dataclass
class GumbelExploration(NoExploration):
    """Gumbel-Softmax noise on soft thinking's mixture weights (soft thinking mode only; in the latent
    phase it does nothing, as its base class)."""

    stochastic = True  # the soft steps are Gumbel-max samples: actions with a log-density

    tau: float = 0.1
    """Temperature of the Gumbel-Softmax, ``y' = softmax(g' / tau)``."""
    clamp: tuple[float, float] = (-1.5, 3.0)
    """Range the Gumbel draws are clamped to (the reference's)."""

    def __post_init__(self) -> None:
        if self.tau <= 0:
            raise ValueError(f"gumbel_tau must be > 0, got {self.tau}")

    def soft_logits(self, p: torch.Tensor, seeds: torch.Tensor, step: int) -> tuple[torch.Tensor, float]:
        """``p~ [B, k]`` -> ``(g' [B, k], tau)``."""
        g = gumbel_noise(seeds.to(p.device), step, p.shape[-1], self.clamp).to(p.dtype)
        noisy = torch.log(p + 1e-6) + g
        return noisy.masked_fill(p == 0, float("-inf")), self.tau


__all__ = ["GumbelExploration", "gumbel_noise"]
