"""Attention for one-position queries on a CPU: the decoding steps and the thoughts, as three small ops.

A decoding step (and a Coconut thought, and a soft-thinking step) asks each layer for the attention of one
new position over the cache. torch's CPU kernels for ``scaled_dot_product_attention`` are built for long
queries: for a query of one position they cost 1.5–2x two matmuls and a softmax in float32, and 4–5x under
bf16 autocast (SmolLM2's shapes, 64 rows over 100 cached positions: 4.2 ms a layer against 0.9 ms;
benchmarks/bench_engine.py measures the whole rollout). So every model latentrl builds or loads runs its
attention through ``ATTENTION`` (:func:`use_decode_attention`), HF's ``sdpa`` in everything but that case:

    s = q K^T * scale + mask        q [B, Hkv, r, D] (the r = H / Hkv query heads of each key head), K [B, Hkv, L, D]
    o = softmax(s) V                 in float32 (as torch's CPU kernels accumulate), cast back to q's dtype

Where it applies: models of :data:`MODEL_TYPES`, a CPU tensor, one query position, as many query rows as key
rows, no attention dropout, no position bias or soft-cap (HF's ``sdpa`` ignores every other keyword, and so does
this). Everywhere else, and on every accelerator, the call
goes to HF's ``sdpa_attention_forward`` unchanged. Equal to it within float rounding (tests); the rounding
differs, so a sampled token within rounding of its draw's boundary can flip.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "latentrl_sdpa"  # a name holding "sdpa", so HF checks that the model supports SDPA before using it


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                        scale: float) -> torch.Tensor:  # fmt: skip
    """Attention of one query position: ``q [B, H, 1, D]``, ``k [B, Hkv, L, D]``, ``v [B, Hkv, L, Dv]`` (H a
    multiple of Hkv), ``mask`` None, bool ``[B|1, 1, 1, L]`` (True: attend) or additive float -> ``[B, H, 1, Dv]``
    in q's dtype."""
    B, H, _, D = q.shape
    Hkv, dtype = k.shape[1], torch.promote_types(q.dtype, torch.float32)  # float32, or float64 (tests)
    with torch.autocast(q.device.type, enabled=False):
        s = torch.matmul(q.to(dtype).reshape(B, Hkv, H // Hkv, D), k.to(dtype).transpose(-1, -2)) * scale  # [B, Hkv, r, L]
        if mask is not None:
            s = s.masked_fill(~mask, torch.finfo(dtype).min) if mask.dtype == torch.bool else s + mask.to(dtype)
        p = torch.softmax(s, dim=-1)
        if mask is not None and mask.dtype == torch.bool:
            p = p.masked_fill(~mask.any(-1, keepdim=True), 0.0)  # a row that sees nothing gives 0, as sdpa's does
        o = torch.matmul(p, v.to(dtype))  # [B, Hkv, r, Dv]
    return o.reshape(B, H, 1, v.shape[-1]).to(q.dtype)


def decode_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             is_causal=None, **kwargs):  # fmt: skip
    """HF's attention-function signature (``[B, H, Q, D]`` in, ``([B, Q, H, D], None)`` out): the one-position
    case of a CPU through :func:`one_query_attention`, all else through ``sdpa_attention_forward``."""
    one_query = query.shape[2] == 1 and query.device.type == "cpu" and not dropout and query.shape[0] == key.shape[0]
    plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None
    mask_fits = attention_mask is None or (attention_mask.shape[-1] == key.shape[2] and attention_mask.shape[1] == 1)
    if not (one_query and plain and mask_fits):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)  # fmt: skip
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return one_query_attention(query, key, value, attention_mask, scale).transpose(1, 2), None


AttentionInterface.register(ATTENTION, decode_attention_forward)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks HF builds for sdpa


# the model types whose modeling code was checked to treat this as it treats "sdpa" (some compare the name itself:
# Gemma 4's KV-shared layers slice their queries only when it is literally "sdpa")
MODEL_TYPES = ("gpt2", "llama", "qwen2")


def use_decode_attention(model) -> None:
    """Switch a model of :data:`MODEL_TYPES` that runs HF's ``sdpa`` to :data:`ATTENTION` (any other model, and
    eager, flash or flex attention, is left as it is). Not written to ``config.json``: a saved checkpoint loads
    with plain ``transformers`` as before."""
    config = model.config
    if getattr(config, "model_type", None) in MODEL_TYPES and getattr(config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(ATTENTION)
