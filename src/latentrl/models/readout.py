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

from dataclasses import dataclass

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




# ---------------------------------------------------------------------------------------------- policy heads

MODULE_NAMES = {"attn": ("attn", "self_attn", "self_attention", "attention"), "ffn": ("mlp", "feed_forward", "ffn")}


@dataclass(frozen=True)
class PolicyHead:
    """Which policy the log-probs are read from: the full one (``layer=None``), or layer ``l``'s internal
    policy (1 <= l <= L, HF's numbering: the output of block l) from its residual stream, attention
    output or FFN output, with or without the final norm."""

    layer: int | None = None
    module: str = "residual"
    final_norm: bool = False

    @property
    def full(self) -> bool:
        return self.layer is None


FULL_POLICY = PolicyHead()


class ReadoutTap:
    """A forward hook on the module a head reads, keeping its output (with gradient) per model call;
    ``hidden()`` concatenates the calls along positions (the latent forward calls the model per segment)."""

    def __init__(self, model: torch.nn.Module, head: PolicyHead):
        from latentrl.exploration.dropout import decoder_blocks

        blocks = decoder_blocks(model)
        if not 1 <= head.layer <= len(blocks):
            raise ValueError(f"bupo_layer={head.layer} is outside {type(model).__name__}'s layers 1..{len(blocks)}")
        block = blocks[head.layer - 1]
        if head.module == "residual":
            self.module = block
        else:
            names = MODULE_NAMES.get(head.module, ())
            self.module = next((getattr(block, n) for n in names if isinstance(getattr(block, n, None), torch.nn.Module)), None)
            if self.module is None:
                raise ValueError(f"bupo_module={head.module!r}: {type(block).__name__} (block {head.layer} of "
                                 f"{type(model).__name__}) has no such module")  # fmt: skip
        self.parts: list[torch.Tensor] = []
        self.handle = None

    def __enter__(self) -> ReadoutTap:
        self.handle = self.module.register_forward_hook(
            lambda m, a, o: self.parts.append(o[0] if isinstance(o, tuple) else o))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def hidden(self) -> torch.Tensor:  # [B, L, D]
        return torch.cat(self.parts, dim=1)


def head_logits(model: torch.nn.Module, head: PolicyHead, hidden: torch.Tensor, num_layers: int) -> torch.Tensor:
    """The internal policy's logits ``[B, L, V]`` from the tapped ``hidden [B, L, D]``. The last layer's
    residual read-out is always normed (HF's ``hidden_states[L]``: the full policy)."""
    return ban_never_sampled(model, layer_logits(head_input(model, head, hidden, num_layers), unembedding(model)))


def head_input(model: torch.nn.Module, head: PolicyHead, hidden: torch.Tensor, num_layers: int) -> torch.Tensor:
    """What ``unembedding(model)`` reads for the internal policy of ``head``: the tapped ``hidden [B, L, D]``,
    through the final norm when the head asks for it (always for the last layer's residual stream)."""
    normed = head.final_norm or (head.module == "residual" and head.layer == num_layers)
    return final_norm(model)(hidden) if normed else hidden


def plain_head(model: torch.nn.Module) -> bool:
    """Whether ``model``'s logits are exactly ``hidden_states[-1] @ unembedding^T`` (layout tokens banned): an
    LM head without bias, no hook of anyone else's on it, no logit processing in the config (Gemma 2's
    soft-cap, Cohere's and Granite's scales), and a numeric check on a few positions, made once and remembered
    on the model (the cheap structural checks are made on every call). True for GPT-2, Llama, Qwen2 and
    SmolLM2; it lets the log-prob recomputation apply the head itself, in vocabulary chunks."""
    from latentrl.models.build import never_sampled_ids

    head, embed, config = model.get_output_embeddings(), model.get_input_embeddings(), getattr(model, "config", None)
    processed = any(getattr(config, k, None) not in (None, 1, 1.0) for k in LOGIT_PROCESSING)
    ours = 1 if never_sampled_ids(model) else 0  # ban_layout_tokens' hook
    if (not isinstance(head, torch.nn.Linear) or head.bias is not None or embed is None or processed
            or len(head._forward_hooks) != ours or head._forward_pre_hooks):  # fmt: skip
        return False
    known = getattr(model, "_latentrl_plain_head", None)
    if known is None:
        with torch.no_grad(), torch.autocast(embed.weight.device.type, enabled=False):
            rows = torch.linspace(0, embed.weight.shape[0] - 1, 4).long().to(embed.weight.device)
            out = model(inputs_embeds=embed.weight[rows][None], output_hidden_states=True)
            mine = ban_never_sampled(model, out.hidden_states[-1][0] @ head.weight.t())
            known = bool(torch.allclose(out.logits[0].float(), mine.float(), atol=1e-4, rtol=1e-4))
        model._latentrl_plain_head = known
    return known


LOGIT_PROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # config keys that change logits


def ban_never_sampled(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """``logits`` with the ids the model never generates (its layout tokens) set as its LM head sets them,
    so that an internal policy is a distribution over the same tokens as the full one."""
    from latentrl.models.build import NEVER_SAMPLED_LOGIT, never_sampled_ids

    ids = never_sampled_ids(model)
    return logits.index_fill_(-1, torch.tensor(ids, device=logits.device), NEVER_SAMPLED_LOGIT) if ids else logits


__all__ = ["FULL_POLICY", "PolicyHead", "ReadoutTap", "final_norm", "head_input", "head_logits", "layer_logits",
           "plain_head", "token_entropy", "unembedding"]  # fmt: skip
