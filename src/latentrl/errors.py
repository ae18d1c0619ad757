"""Errors shared across layers (every latentrl error a user can cause is a ValueError: the CLI prints it
as one line and exits with status 2)."""

from __future__ import annotations

import torch


class NonFiniteError(ValueError):
    """A NaN or infinite loss, gradient, weight or logit: the run stops before any checkpoint holds it."""


class FiniteWatch:
    """Notes, without a host synchronisation, whether any logits seen were NaN or infinite, and makes
    them safe to sample from meanwhile; ``check()`` raises once at the end."""

    def __init__(self, device):
        self.bad = torch.zeros((), dtype=torch.bool, device=device)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.numel() == 0:
            return logits
        lo, hi = torch.aminmax(logits)  # one pass; NaN propagates to both, +-inf shows at an end
        self.bad = self.bad | ~(torch.isfinite(lo) & torch.isfinite(hi))  # (isfinite().all(): 3 passes, 15x the time)
        return torch.nan_to_num(logits, nan=0.0, posinf=1e4, neginf=-1e4)

    def check(self) -> None:
        if bool(self.bad):
            raise NonFiniteError("the model's next-token logits are NaN or infinite (its weights have diverged, or "
                                 "an input is extreme)")  # fmt: skip
