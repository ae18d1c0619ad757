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


@contextmanager
def read_out_hidden(model, head):
    """As :func:`read_out`, for a forward that returns last-layer hidden states instead of logits: yields
    ``policy(hidden) -> what the LM head's weight reads`` at the same positions (the hidden states themselves
    for the full policy; the tapped layer, normed as the head asks, for an internal one)."""
    from latentrl.exploration.dropout import decoder_blocks
    from latentrl.models.readout import ReadoutTap, head_input

    if head.full:
        yield lambda hidden: hidden
        return
    with ReadoutTap(model, head) as tap:
        yield lambda hidden: head_input(model, head, tap.hidden()[:, -hidden.shape[1] :], len(decoder_blocks(model)))



class _HeadLogps(torch.autograd.Function):
    """``log softmax(h W^T / T)`` at ``ids`` and its entropy, never holding the ``[N, V]`` logits: they are
    made ``chunk`` vocabulary columns at a time (each a large matmul, ``[N, D] x [D, chunk]``), reduced to a
    logsumexp and an expectation per chunk, and made again in the backward instead of being kept (one more
    head matmul). Shapes: ``h [N, D]``, ``weight [V, D]`` (the LM head's), ``ids [N]`` -> ``logps [N]``,
    ``entropy [N]``. ``banned``: ids whose logit is the constant ``banned_logit`` (the layout tokens)."""

    @staticmethod
    def forward(ctx, h, weight, ids, temperature: float, banned: torch.Tensor, banned_logit: float, chunk: int):
        hw = h.to(weight.dtype)
        top_c, lse_c, mean_c = [], [], []  # per chunk c: max m_c, logsumexp, and E[z - m_c] under its softmax
        for lo in range(0, weight.shape[0], chunk):
            z = _chunk_logits(hw, weight, lo, chunk, temperature, banned, banned_logit)  # [N, c] float32
            top = z.amax(-1, keepdim=True)
            z = z.sub_(top)  # <= 0: the products below lose no digits to a large common offset
            e = torch.exp(z)
            total = e.sum(-1)
            top_c.append(top.squeeze(-1))
            lse_c.append(top_c[-1] + total.log())
            mean_c.append(torch.bmm(e[:, None, :], z[:, :, None]).view(-1) / total)
        top_c, lse_c, mean_c = torch.stack(top_c, -1), torch.stack(lse_c, -1), torch.stack(mean_c, -1)  # [N, chunks]
        lse = torch.logsumexp(lse_c, -1)  # [N]
        # H = lse - E_p[z] = sum_c P(c) (lse - m_c - E_c[z - m_c])
        entropy = (torch.exp(lse_c - lse[:, None]) * (lse[:, None] - top_c - mean_c)).sum(-1)
        logps = _id_logits(hw, weight, ids, temperature, banned, banned_logit) - lse
        ctx.save_for_backward(h, weight, ids, lse, banned)
        ctx.temperature, ctx.banned_logit, ctx.chunk = temperature, banned_logit, chunk
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        h, weight, ids, lse, banned = ctx.saved_tensors
        hw, T = h.to(weight.dtype), ctx.temperature if ctx.temperature > 0 else 1.0
        g = grad_logps.float() / T  # [N]; d logp / d z = onehot(id) - softmax(z), and z = h W^T / T
        g_id = g.masked_fill(torch.isin(ids, banned), 0.0)  # a banned id's logit is a constant
        grad_h = (g_id[:, None] * weight[ids].float()).to(weight.dtype)  # [N, D] the onehot part
        grad_w = torch.zeros_like(weight).index_add_(0, ids, (g_id[:, None] * hw.float()).to(weight.dtype))
        for lo in range(0, weight.shape[0], ctx.chunk):
            z = _chunk_logits(hw, weight, lo, ctx.chunk, ctx.temperature, banned, ctx.banned_logit)
            dz = torch.exp_(z.sub_(lse[:, None])).mul_(-g[:, None]).to(weight.dtype)  # [N, c]; 0 at banned ids
            grad_h.addmm_(dz, weight[lo : lo + ctx.chunk])
            grad_w[lo : lo + ctx.chunk].addmm_(dz.t(), hw)
        return grad_h.to(h.dtype), grad_w, None, None, None, None, None


def _chunk_logits(hw, weight, lo: int, chunk: int, temperature: float, banned, banned_logit: float) -> torch.Tensor:
    """The logits of vocabulary columns ``[lo, lo + chunk)``: ``[N, c]`` float32, banned ids set, over T."""
    z = (hw @ weight[lo : lo + chunk].t()).float()
    inside = banned[(banned >= lo) & (banned < lo + z.shape[1])] - lo
    if len(inside):
        z.index_fill_(-1, inside, banned_logit)
    return z / temperature if temperature > 0 and temperature != 1.0 else z


def _id_logits(hw, weight, ids, temperature: float, banned, banned_logit: float) -> torch.Tensor:
    """``z[n, ids[n]]`` as a row-wise inner product: ``[N]`` float32."""
    z = (hw * weight[ids]).sum(-1).float().masked_fill(torch.isin(ids, banned), banned_logit)
    return z / temperature if temperature > 0 and temperature != 1.0 else z


def head_token_logps(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, temperature: float,
                     banned: tuple[int, ...] = (), banned_logit: float = -1e4,
                     chunk_elements: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """:func:`token_logps` of the logits ``hidden @ weight^T`` without materialising them: ``hidden [B, T, D]``,
    ``weight [V, D]``, ``ids [B, T]`` -> ``logps [B, T]``, ``entropy [B, T]``. The logits exist a vocabulary
    chunk at a time (about ``chunk_elements`` floats, 16 MB), in the forward and again in the backward, so a
    real vocabulary's ``[B, T, V]`` tensor and its softmax are never allocated (nor paged in, on the CPU)."""
    B, T, D = hidden.shape
    index = torch.tensor(banned, dtype=torch.long, device=hidden.device)
    chunk = max(256, chunk_elements // max(1, B * T))
    with torch.autocast(hidden.device.type, enabled=False):  # the head in the weight's dtype, forward and backward
        logps, entropy = _HeadLogps.apply(hidden.reshape(B * T, D), weight, ids.reshape(-1), temperature, index,
                                          banned_logit, chunk)  # fmt: skip
    return logps.view(B, T), entropy.view(B, T)
