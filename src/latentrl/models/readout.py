"""Policy read-outs (BuPO, Tan et al. 2025; DESIGN §2.4): the full policy, or an internal policy read
from the residual stream or from one module's output.

    H_l = H_0 + sum_{i<=l} A_i + sum_{j<=l} F_j          the residual stream after block l
    pi^l = softmax(H_l W_U)                             internal layer policy (the reference: no final norm)
    pi^l_norm = softmax(norm(H_l) W_U)                  logit lens (the final norm applied)

HF's ``hidden_states[0]`` is the embedding output, ``hidden_states[l]`` for 1 <= l < L the raw output of
block l, and ``hidden_states[L]`` is already after the final norm, so layer L's residual read-out with
the final norm is the full policy itself.

Shape legend: ``B`` rows, ``T`` positions, ``D`` hidden size, ``V`` vocabulary.
"""

from __future__ import annotations

import torch


def layer_logits(hidden: torch.Tensor, unembedding: torch.Tensor, norm: torch.nn.Module | None = None) -> torch.Tensor:
    """``hidden [B, T, D]`` read out through ``unembedding [V, D]`` (the LM head's weight), after
    ``norm`` when given: ``[B, T, V]`` logits of the internal policy."""
    h = norm(hidden) if norm is not None else hidden
    return h @ unembedding.T.to(h.dtype)  # [B, T, V]


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``H(softmax(logits))`` per position: ``[..., V]`` -> ``[...]`` (float32, natural log)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The final norm before the LM head (``transformer.ln_f`` of GPT-2, ``model.norm`` of Llama/Qwen2)."""
    for name in ("transformer.ln_f", "model.norm", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm"):
        try:
            return model.get_submodule(name)
        except AttributeError:
            continue
    raise ValueError(f"cannot find the final norm of {type(model).__name__} (tried transformer.ln_f, model.norm, ...)")


def unembedding(model: torch.nn.Module) -> torch.Tensor:
    """``W_U [V, D]``: the LM head's weight."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (an LM head) to read a policy out with")
    return head.weight


__all__ = ["final_norm", "layer_logits", "token_entropy", "unembedding"]
