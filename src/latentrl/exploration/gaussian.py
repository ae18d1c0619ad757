"""Gaussian noise on the fed-back thought: ``h + sigma * eps``, ``eps ~ N(0, I)`` seeded per row.

``eps`` is drawn from the same counter-based hash as the dropout masks (Box-Muller on two hashed
uniforms), so it replays bit-exactly from the row's seed. ``scope="rollout"`` holds one ``eps`` per
row over all latent steps; ``scope="step"`` draws a fresh one per step.

Shape legend: ``B`` rows (rollouts), ``D`` hidden size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from latentrl.exploration.dropout import PHASES, SCOPES
from latentrl.exploration.stream import SITE_IDS, hash_uniform


def hash_normal(seeds: torch.Tensor, layer: int, step: int, width: int) -> torch.Tensor:
    """Standard normals ``[B, width]`` (float32) from ``seeds [B]`` by Box-Muller."""
    u1 = 1.0 - hash_uniform(seeds, SITE_IDS["gauss_a"], layer, step, width)  # (0, 1]: log is finite
    u2 = hash_uniform(seeds, SITE_IDS["gauss_b"], layer, step, width)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


@dataclass
class GaussianExploration:
    """Additive Gaussian noise on the continuous thoughts."""

    sigma: float = 0.1
    """Standard deviation of the noise added to each coordinate of the fed-back state."""
    scope: str = "rollout"
    """``"rollout"``: one noise vector per row for all latent steps; ``"step"``: a fresh one per step."""

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if self.scope not in SCOPES:
            raise ValueError(f"gaussian scope must be one of {SCOPES}, got {self.scope!r}")
        self._seeds: torch.Tensor | None = None
        self._phase: str | None = None

    @contextmanager
    def session(self, model: torch.nn.Module, seeds: torch.Tensor) -> Iterator[GaussianExploration]:
        if seeds.dim() != 1:
            raise ValueError(f"seeds must be a 1-D tensor [B], got shape {tuple(seeds.shape)}")
        self._seeds, self._phase = seeds.long(), None
        try:
            yield self
        finally:
            self._seeds, self._phase = None, None

    def set_phase(self, phase: str, step: int = 0) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        self._phase = phase

    perturbs_prefill = False  # the noise is added to the fed-back thoughts only

    def select_rows(self, rows: torch.Tensor) -> None:
        self._seeds = self._seeds[rows.to(self._seeds.device)]

    def thought(self, h: torch.Tensor, step: int) -> torch.Tensor:  # [B, D] -> [B, D]
        if self._phase != "latent" or self.sigma == 0:
            return h
        if self._seeds is None or len(self._seeds) != h.shape[0]:
            raise ValueError("GaussianExploration.thought needs an active session with one seed per row")
        eps = hash_normal(self._seeds.to(h.device), 0, 0 if self.scope == "rollout" else step, h.shape[-1])
        return h + self.sigma * eps.to(h.dtype)


__all__ = ["GaussianExploration", "hash_normal"]
