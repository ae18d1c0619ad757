"""Per-token log-probs and entropies of completions: the record every mode's recomputation returns."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class LogProbs:
    logps: torch.Tensor  # [B, T] log pi of each completion position (a token, or a soft thinking step)
    entropy: torch.Tensor  # [B, T] entropy of the next-token distribution there


def token_logps(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``log softmax(logits / T)`` at ``ids`` and the entropy: ``[B, T, V]``, ``[B, T]`` -> ``[B, T]``, ``[B, T]``."""
    logits = logits.float() / (temperature if temperature > 0 else 1.0)
    logp_all = torch.log_softmax(logits, dim=-1)  # [B, T, V]
    logps = logp_all.gather(-1, ids[..., None]).squeeze(-1)  # [B, T]
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # [B, T]
    return logps, entropy


@contextmanager
def read_out(model, head):
    """Around a forward: yields ``policy(logits) -> logits``, the model's own logits for the full policy,
    or the internal policy of ``head`` read from the tapped layer of the same forward (no second pass)."""
    from latentrl.exploration.dropout import decoder_blocks
    from latentrl.models.readout import ReadoutTap, head_logits

    if head.full:
        yield lambda logits: logits
        return
    with ReadoutTap(model, head) as tap:
        yield lambda logits: head_logits(model, head, tap.hidden(), len(decoder_blocks(model)))
