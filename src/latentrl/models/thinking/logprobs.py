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
    from latentrl.models.readout import ban_never_sampled, layer_logits, unembedding

    with read_out_hidden(model, head) as reads:  # reads(x): the read-out at x's positions
        if head.full:
            yield lambda logits: logits
        else:
            yield lambda logits: ban_never_sampled(model, layer_logits(reads(logits), unembedding(model)))


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
    head matmul). Shapes: ``h [N, D]``, ``weight [V, D]`` (the LM head's), ``ids [N, m]`` (m targets per row:
    a token, or a soft step's kept ids) -> ``logps [N, m]``, ``entropy [N]``. ``banned``: ``{chunk start: column ids in the chunk}`` of the ids whose logit is the
    constant ``banned_logit`` (the layout tokens). Sums and gradients accumulate in float32."""

    @staticmethod
    def forward(ctx, h, weight, ids, temperature: float, banned: dict, banned_logit: float, chunk: int):
        hw = h.to(weight.dtype)
        z_id = torch.zeros(ids.shape, dtype=torch.float32, device=h.device)  # the target's logit, from its chunk
        top_c, lse_c, mean_c = [], [], []  # per chunk c: max m_c, logsumexp, and E[z - m_c] under its softmax
        for lo in range(0, weight.shape[0], chunk):
            z = _chunk_logits(hw, weight, lo, chunk, temperature, banned.get(lo), banned_logit)  # [N, c] float32
            local, inside = _local_ids(ids, lo, z.shape[1])
            z_id = torch.where(inside, z.gather(-1, local), z_id)
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
        ctx.save_for_backward(h, weight, ids, lse)
        ctx.temperature, ctx.banned, ctx.banned_logit, ctx.chunk = temperature, banned, banned_logit, chunk
        ctx.mark_non_differentiable(entropy)
        return z_id - lse[:, None], entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        h, weight, ids, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        hw, T = h.to(weight.dtype), ctx.temperature if ctx.temperature > 0 else 1.0
        g = grad_logps.float() / T  # [N, m]; d logp_j / d z = onehot(id_j) - softmax(z), and z = h W^T / T
        g_sum = g.sum(-1, keepdim=True)  # [N, 1]
        grad_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None
        h32 = hw.float() if need_w else None
        with torch.autocast(h.device.type, enabled=False):
            for lo in range(0, weight.shape[0], ctx.chunk):
                banned = ctx.banned.get(lo)
                z = _chunk_logits(hw, weight, lo, ctx.chunk, ctx.temperature, banned, ctx.banned_logit)
                dz = torch.exp_(z.sub_(lse[:, None])).mul_(-g_sum)  # [N, c]; 0 at banned ids
                local, inside = _local_ids(ids, lo, dz.shape[1])
                dz.scatter_add_(-1, local, torch.where(inside, g, 0.0))  # + g_j at id_j (0 where not in the chunk)
                if banned is not None:
                    dz.index_fill_(-1, banned, 0.0)  # a banned id's logit is a constant, also as a target
                if need_h:
                    grad_h.addmm_(dz, weight[lo : lo + ctx.chunk].float())
                if need_w:
                    grad_w[lo : lo + ctx.chunk] = (dz.t() @ h32).to(weight.dtype)
        return None if grad_h is None else grad_h.to(h.dtype), grad_w, None, None, None, None, None


def _local_ids(ids: torch.Tensor, lo: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` as columns of the chunk starting at ``lo`` (clamped into it), and which of them fall inside."""
    local = ids - lo
    inside = (local >= 0) & (local < width)
    return local.clamp(0, width - 1), inside


def _chunk_logits(hw, weight, lo: int, chunk: int, temperature: float, banned, banned_logit: float) -> torch.Tensor:
    """The logits of vocabulary columns ``[lo, lo + chunk)``: ``[N, c]`` float32, banned columns set, over T."""
    z = (hw @ weight[lo : lo + chunk].t()).float()
    if banned is not None:
        z.index_fill_(-1, banned, banned_logit)
    return z / temperature if temperature > 0 and temperature != 1.0 else z


def model_head_logps(model, hidden: torch.Tensor, ids: torch.Tensor, temperature: float):
    """:func:`head_token_logps` through ``model``'s own LM head weight, its layout tokens banned (their logit the
    constant ``NEVER_SAMPLED_LOGIT``, as the model's ban hook sets it)."""
    from latentrl.models.build import NEVER_SAMPLED_LOGIT, never_sampled_ids
    from latentrl.models.readout import unembedding

    return head_token_logps(hidden, unembedding(model), ids, temperature, never_sampled_ids(model), NEVER_SAMPLED_LOGIT)


def head_token_logps(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, temperature: float,
                     banned: tuple[int, ...] = (), banned_logit: float = -1e4,
                     chunk_elements: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """:func:`token_logps` of the logits ``hidden @ weight^T`` without materialising them: ``hidden [B, T, D]``,
    ``weight [V, D]``, ``ids [B, T]`` (or ``[B, T, m]``: m ids per position) -> ``logps [B, T]`` (``[B, T, m]``),
    ``entropy [B, T]``. The logits exist a vocabulary chunk at a time (about ``chunk_elements`` floats, 16 MB),
    in the forward and again in the backward, so a real vocabulary's ``[B, T, V]`` tensor and its softmax are
    never allocated (nor paged in, on the CPU)."""
    (B, T, D), m = hidden.shape, ids.shape[2] if ids.dim() == 3 else 1
    chunk = max(256, chunk_elements // max(1, B * T))
    by_chunk = {}  # chunk start -> its banned columns (built on the host: no device read per chunk)
    for i in sorted(set(banned)):
        by_chunk.setdefault(i - i % chunk, []).append(i % chunk)
    by_chunk = {lo: torch.tensor(cols, dtype=torch.long, device=hidden.device) for lo, cols in by_chunk.items()}
    with torch.autocast(hidden.device.type, enabled=False):  # the head in the weight's dtype (so in the backward)
        logps, entropy = _HeadLogps.apply(hidden.reshape(B * T, D), weight, ids.reshape(B * T, m), temperature, by_chunk,
                                          banned_logit, chunk)  # fmt: skip
    return logps.view(ids.shape), entropy.view(B, T)
