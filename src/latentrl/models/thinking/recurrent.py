"""What discrete, no-CoT and Coconut thinking share: generation and log-prob recomputation through
the latent forward (``latentrl.models.latent``), whose thinking loop is the ``<|latent|>`` recurrence.

In discrete modes the prompt has no ``<|latent|>`` slot, so the same loop is plain decoding; the
recomputation runs the prompt as the prefill phase and the completion as the answer phase.
"""

from __future__ import annotations

import torch

from latentrl.models.latent import generate, latent_forward
from latentrl.models.readout import FULL_POLICY
from latentrl.models.thinking.logprobs import read_out


class LatentForwardThinking:
    """Generation and recomputation through ``latent_forward`` (the base of the three modes)."""

    name = "discrete"
    latent_markers = False
    keeps_steps = True

    def generate(self, model, prompts, thinking, *, exploration, **decode):
        return generate(model, prompts, latent_token_id=thinking.latent_token_id, exploration=exploration, **decode)

    def completion_logps(self, model, record, exploration, temperature: float, head=FULL_POLICY, forward=None):
        """``head``: the full policy, or an internal layer's (BuPO), read from the same forward. On a model whose
        logits are a plain ``hidden @ W^T`` the forward stops at the hidden states and the head runs here in
        vocabulary chunks (``head_token_logps``: no ``[B, T, V]`` tensor); otherwise the model's logits are read.
        ``forward``: what runs the model's calls (the compiled forward; None: ``model``)."""
        from latentrl.models.readout import plain_head
        from latentrl.models.thinking.logprobs import LogProbs, model_head_logps, read_out_hidden, token_logps

        ids = torch.cat([record.prompt_ids, record.completion_ids], dim=1)  # [B, P+T]
        mask = torch.cat([record.prompt_mask, record.completion_mask], dim=1)  # [B, P+T]
        latent = torch.cat([record.latent_mask, torch.zeros_like(record.completion_mask, dtype=torch.bool)], dim=1)
        P, chunked = record.prompt_ids.shape[1], plain_head(model)
        with exploration.session(model, record.seeds), (read_out_hidden if chunked else read_out)(model, head) as policy:
            out = latent_forward(model, ids, mask, latent, exploration, prompt_len=P, logits_from=P - 1,
                                 share_prefill=head.full, hidden_only=chunked, forward=forward)  # BuPO's tap reads every row
        if chunked:  # [B, T, D]: the positions that chose each completion token
            logps, entropy = model_head_logps(model, policy(out.hidden)[:, :-1], record.completion_ids, temperature)
        else:
            logps, entropy = token_logps(policy(out.logits)[:, :-1], record.completion_ids, temperature)  # [B, T, V] in
        return LogProbs(logps, entropy)

    def loss_mask(self, record, exploration) -> torch.Tensor:
        return record.completion_mask
