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
    """``log softmax(logits / T)`` at ``ids`` and the entropy: ``[B, T, V]``, ``[B, T]`` -> ``[B, T]``, ``[B, T]``.

    Selective: ``logit[id] - logsumexp(logits)``, so autograd keeps no ``[B, T, V]`` log-softmax of its own;
    the entropy (a diagnostic, no gradient) is computed in row chunks, ``H = lse - sum_v p_v logit_v``.
    """
    logps, scaled, lse = selected_logps(logits, ids, temperature)
    return logps, chunked_entropy(scaled.detach(), lse.detach())


def selected_logps(logits: torch.Tensor, ids: torch.Tensor, temperature: float):
    """``log softmax(logits / T)`` at ``ids`` as ``logit[id] - logsumexp``, never materialising the log-softmax:
    ``[..., V]``, ``[...]`` -> ``(logps [...], the scaled float logits [..., V], their logsumexp [...])``."""
    scaled = logits.float()
    if temperature > 0 and temperature != 1.0:
        scaled = scaled / temperature
    lse = torch.logsumexp(scaled, dim=-1)
    return scaled.gather(-1, ids[..., None]).squeeze(-1) - lse, scaled, lse


def chunked_entropy(logits: torch.Tensor, lse: torch.Tensor, chunk_elements: int = 1 << 22) -> torch.Tensor:
    """``H(softmax(logits))`` per row from ``logits [..., V]`` and their ``logsumexp [...]``, a few rows at a
    time so that no second full-size tensor is live: ``H = lse - <p, logits>`` (the inner product as a
    batched matmul, so that ``p * logits`` is never stored either). Chunks of 4M elements (16 MB) stay under
    glibc's 32 MB mmap threshold, so on the CPU their memory is reused instead of paged in anew each time."""
    flat, flat_lse = logits.reshape(-1, logits.shape[-1]), lse.reshape(-1)
    rows = max(1, chunk_elements // max(1, logits.shape[-1]))
    with torch.no_grad():
        parts = [lo - torch.bmm(torch.softmax(x, -1)[:, None, :], x[:, :, None]).view(-1)
                 for x, lo in zip(flat.split(rows), flat_lse.split(rows))]  # fmt: skip
    return torch.cat(parts).reshape(lse.shape) if parts else lse.clone()


@contextmanager
def read_out(model, head):
    """Around a forward: yields ``policy(logits) -> logits``, the model's own logits for the full policy,
    or the internal policy of ``head`` read from the tapped layer of the same forward (no second pass), at
    the same positions as ``logits`` (the last ones, when the forward kept only those)."""
    from latentrl.exploration.dropout import decoder_blocks
    from latentrl.models.readout import ReadoutTap, head_logits

    if head.full:
        yield lambda logits: logits
        return
    with ReadoutTap(model, head) as tap:
        yield lambda logits: head_logits(model, head, tap.hidden()[:, -logits.shape[1] :], len(decoder_blocks(model)))
