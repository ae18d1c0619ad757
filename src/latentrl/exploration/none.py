"""No exploration: a deterministic latent phase, and plain Soft Thinking's weights."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


class NoExploration:
    """Nothing is perturbed; the base of sources that act at one point only (they inherit the no-ops)."""

    stochastic = False  # soft thinking steps under this source are no actions of the policy
    perturbs_prefill = False  # nor do the sources built on it (soft steps); a subclass with prefill hooks sets True

    def session(self, model: torch.nn.Module, seeds: torch.Tensor) -> AbstractContextManager:
        return nullcontext()

    def set_phase(self, phase: str, step: int = 0) -> None:
        return None

    def thought(self, h: torch.Tensor, step: int) -> torch.Tensor:
        return h

    def select_rows(self, rows: torch.Tensor) -> None:
        return None

    def soft_logits(self, p: torch.Tensor, seeds: torch.Tensor, step: int) -> tuple[torch.Tensor, float]:
        """Plain Soft Thinking: ``g' = log p~`` and ``tau = 1``, so the weights are ``p~`` itself."""
        return torch.log(p), 1.0
