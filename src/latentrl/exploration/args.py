"""The config keys of the exploration sources, one field group that ``latentrl grpo`` and
``latentrl eval`` share, so an evaluation builds exactly the noise a run trained with (the same keys
give the same source, and the same seeds the same masks)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from latentrl.config import Config

Site = Literal["thought", "mlp", "attn", "block"]


class ExplorationArgs(Config):
    """Which noise source acts, and its settings (each source reads its own keys)."""

    exploration: Literal["none", "dropout", "gaussian", "gumbel", "soft_gaussian", "dirichlet"] = Field(
        "none", description="Noise source: dropout or gaussian on the latent phase; gumbel (SofT-GRPO) or the "
                            "ablations soft_gaussian and dirichlet on soft thinking steps.",
    )  # fmt: skip
    dropout_p: float = Field(0.1, ge=0, lt=1, description="Drop probability of the masks.")
    dropout_scope: Literal["rollout", "step"] = Field("rollout", description="rollout (shared mask) or step (per step).")
    dropout_sites: list[Site] = Field(["thought"], min_length=1, description="Where the masks act.")
    dropout_cover_prefill: bool = Field(False, description="Masks also act on the prompt prefill.")
    dropout_cover_answer: bool = Field(False, description="Masks also act on answer decoding.")
    gaussian_sigma: float = Field(0.1, ge=0, description="Std of Gaussian thought noise.")
    gumbel_tau: float = Field(0.1, gt=0, description="Gumbel-Softmax temperature of soft thinking's mixture weights.")
    soft_gaussian_sigma: float = Field(0.05, ge=0, description="Std of the Gaussian noise on the mixture weights.")

    def dropout_kwargs(self) -> dict:
        return dict(p=self.dropout_p, scope=self.dropout_scope, sites=tuple(self.dropout_sites),
                    cover_prefill=self.dropout_cover_prefill, cover_answer=self.dropout_cover_answer)  # fmt: skip

    def exploration_kwargs(self) -> dict:
        """The keyword arguments of ``make_exploration(self.exploration, ...)``."""
        if self.exploration == "dropout":
            return self.dropout_kwargs()
        if self.exploration == "gaussian":
            return dict(sigma=self.gaussian_sigma, scope=self.dropout_scope)
        if self.exploration == "gumbel":
            return dict(tau=self.gumbel_tau)
        if self.exploration == "soft_gaussian":
            return dict(sigma=self.soft_gaussian_sigma)
        return {}

    def check_source_fits_mode(self, thinking_mode: str | None) -> None:
        """ValueError when the source cannot act in ``thinking_mode`` (None: not known yet, only the soft
        sources' need of soft thinking is left to check later)."""
        soft_only = self.exploration in ("gumbel", "soft_gaussian", "dirichlet")
        if soft_only and thinking_mode not in (None, "soft"):
            raise ValueError(f"exploration={self.exploration} perturbs soft thinking steps: it needs thinking_mode=soft, "
                             f"not {thinking_mode!r}")  # fmt: skip
        if thinking_mode == "soft" and self.exploration in ("dropout", "gaussian"):
            raise ValueError(f"thinking_mode=soft takes exploration none, gumbel, soft_gaussian or dirichlet, not "
                             f"{self.exploration}")  # fmt: skip

    def build_exploration(self):
        from latentrl.exploration import make_exploration

        return make_exploration(self.exploration, **self.exploration_kwargs())
