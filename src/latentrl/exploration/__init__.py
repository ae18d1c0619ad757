"""Exploration sources: the stochasticity injected into the latent phase of a rollout.

An exploration source is anything with the three methods of :class:`Exploration`. The latent
forward (``latentrl.models.latent``) calls them at fixed points, so a source can perturb the
fed-back thoughts or install module hooks, record its noise per rollout, and replay it exactly
in the update (common random numbers).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

import torch


class Exploration(Protocol):
    """The seam between the latent forward and a noise source.

    Shapes: ``seeds [B]`` one noise seed per row (rollout); ``h [B, D]`` a fed-back hidden state.
    """

    def session(self, model: torch.nn.Module, seeds: torch.Tensor) -> AbstractContextManager:
        """Activate this source on ``model`` for a batch whose rows carry ``seeds``."""

    def set_phase(self, phase: str, step: int = 0) -> None:
        """Called with ``"prefill"``, then ``"latent"`` once per latent column (``step`` = 0, 1, ...), then ``"answer"``."""

    def thought(self, h: torch.Tensor, step: int) -> torch.Tensor:
        """Transform the hidden state fed back at latent ``step``; returns ``[B, D]``."""

    def select_rows(self, rows: torch.Tensor) -> None:
        """The batch goes on with ``rows`` (indices into the current rows) only: finished rollouts left it."""

    perturbs_prefill: bool
    """Whether the source changes the prompt prefill (rows with the same prompt then differ there). When it
    does not, the latent forward runs a prompt shared by several rows once. A source without the attribute
    is taken to perturb it."""


from latentrl.exploration.none import NoExploration  # noqa: E402
from latentrl.exploration.dropout import DropoutExploration  # noqa: E402
from latentrl.exploration.gaussian import GaussianExploration  # noqa: E402
from latentrl.exploration.gumbel import GumbelExploration  # noqa: E402
from latentrl.exploration.soft_noise import DirichletExploration, SoftGaussianExploration  # noqa: E402

EXPLORATIONS = {"none": NoExploration, "dropout": DropoutExploration, "gaussian": GaussianExploration,
                "gumbel": GumbelExploration, "soft_gaussian": SoftGaussianExploration, "dirichlet": DirichletExploration}  # fmt: skip
SOFT_EXPLORATIONS = ("none", "gumbel", "soft_gaussian", "dirichlet")  # the sources that act on soft thinking steps


def make_exploration(name: str, **kwargs) -> Exploration:
    """An exploration source by name: ``none``, ``dropout`` (p, scope, sites, cover_prefill,
    cover_answer), ``gaussian`` (sigma, scope), or on soft thinking steps ``gumbel`` (tau, clamp) and the
    ablations ``soft_gaussian`` (sigma) and ``dirichlet``."""
    if name not in EXPLORATIONS:
        raise ValueError(f"unknown exploration {name!r}; choose one of {sorted(EXPLORATIONS)}")
    return EXPLORATIONS[name](**kwargs)


__all__ = [
    "EXPLORATIONS", "SOFT_EXPLORATIONS", "DropoutExploration", "Exploration", "GaussianExploration", "GumbelExploration",
    "NoExploration", "SoftGaussianExploration", "DirichletExploration", "make_exploration",
]  # fmt: skip
