"""The ablation noises of soft thinking's mixture weights (DESIGN §2.3, the reference's ablations):

    soft_gaussian:  y = renormalise(max(p~ + sigma * eps, 0)),  eps ~ N(0, I)      (sigma = 0.05)
    dirichlet:      y = G / sum(G),  G_i ~ Gamma(p~_i, 1)                           (y ~ Dirichlet(p~))

Both draw from the shared seeded stream, so a rollout's noise replays bit for bit. Unlike the Gumbel
source they give the mixture no tractable density under theta here: the noise is exogenous (like a
dropout mask), the step's token is ``argmax y``, and in GRPO the soft steps are no actions — the
gradient comes from the answer tokens given the noisy trajectory. The recorded ``g' = log y`` with
``tau = 1`` rebuilds the same inputs in the update.

Gamma draws use Marsaglia and Tsang (2000) with the boost ``Gamma(a) = Gamma(a + 1) * U^(1/a)``
(a = p~ < 1), over a fixed number of hashed candidate pairs (acceptance above 95% each).

Shape legend: ``B`` rows, ``k`` kept ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latentrl.exploration.none import NoExploration
from latentrl.exploration.stream import SITE_IDS, open_uniform

GAMMA_TRIES = 8


def stream_normal(seeds: torch.Tensor, stream_a: int, stream_b: int, step: int, width: int, layer: int = 0) -> torch.Tensor:
    """Standard normals ``[B, width]`` by Box-Muller on two hashed uniforms of the given streams."""
    u1 = open_uniform(seeds, stream_a, layer, step, width)
    u2 = open_uniform(seeds, stream_b, layer, step, width)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def gamma_draws(alpha: torch.Tensor, seeds: torch.Tensor, step: int) -> torch.Tensor:
    """``Gamma(alpha, 1)`` draws for ``alpha [B, k] > 0`` (0 where alpha is 0)."""
    k = alpha.shape[-1]
    boosted = alpha + 1.0
    d = boosted - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    draw = d.clone()  # the fallback when no candidate is accepted (probability < 1e-10)
    accepted = torch.zeros_like(alpha, dtype=torch.bool)
    for j in range(GAMMA_TRIES):  # candidate j: a normal x and a uniform u, both from the stream
        x = stream_normal(seeds, SITE_IDS["gamma_x"], SITE_IDS["gamma_y"], step, k, layer=j).to(alpha.dtype)
        u = open_uniform(seeds, SITE_IDS["gamma_u"], j, step, k).to(alpha.dtype)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp(min=1e-30)))
        take = ok & ~accepted
        draw = torch.where(take, d * v, draw)
        accepted = accepted | ok
    boost = open_uniform(seeds, SITE_IDS["gamma_boost"], 0, step, k).to(alpha.dtype)
    out = draw * boost ** (1.0 / alpha.clamp(min=1e-12))
    return torch.where(alpha > 0, out, torch.zeros_like(out))


def _as_logits(y: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``log y`` with the top-p-dropped ids at ``-inf`` (weight 0, never chosen)."""
    return torch.log(y).masked_fill(p == 0, float("-inf"))


@dataclass
class SoftGaussianExploration(NoExploration):
    """Gaussian noise on the mixture weights, renormalised (soft thinking; an ablation)."""

    stochastic = False  # exogenous noise: the soft steps are no actions

    sigma: float = 0.05

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ValueError(f"soft_gaussian_sigma must be >= 0, got {self.sigma}")

    def soft_logits(self, p: torch.Tensor, seeds: torch.Tensor, step: int) -> tuple[torch.Tensor, float]:
        eps = stream_normal(seeds.to(p.device), SITE_IDS["soft_gauss_a"], SITE_IDS["soft_gauss_b"], step, p.shape[-1])
        y = (p + self.sigma * eps.to(p.dtype)).clamp(min=0).masked_fill(p == 0, 0.0)
        y = torch.where(y.sum(-1, keepdim=True) > 0, y, p)  # every weight pushed to 0: keep p~
        return _as_logits(y / y.sum(-1, keepdim=True), p), 1.0


@dataclass
class DirichletExploration(NoExploration):
    """Mixture weights drawn from Dirichlet(p~) (soft thinking; an ablation)."""

    stochastic = False  # exogenous noise: the soft steps are no actions

    def soft_logits(self, p: torch.Tensor, seeds: torch.Tensor, step: int) -> tuple[torch.Tensor, float]:
        g = gamma_draws(p.double(), seeds.to(p.device), step)  # [B, k]
        g = torch.where(g.sum(-1, keepdim=True) > 0, g, p.double())
        return _as_logits((g / g.sum(-1, keepdim=True)).to(p.dtype), p), 1.0


__all__ = ["DirichletExploration", "SoftGaussianExploration", "gamma_draws", "stream_normal"]
