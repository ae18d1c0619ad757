"""Soft thinking as a thinking mode: generation through ``soft_generate``, recomputation from the record.

The prompt is the discrete one (``question "\\n"``); the completion holds the soft thinking steps,
the end-of-thinking token and the answer. Its text is the thinking steps' recorded tokens (the top-1
or Gumbel-max id of each step) followed by the answer, so with ``soft_top_k=1`` it is exactly the
discrete greedy completion.
"""

from __future__ import annotations

import torch

from latentrl.models.readout import FULL_POLICY, plain_head
from latentrl.models.thinking.logprobs import LogProbs, model_head_logps, read_out, read_out_hidden, selected_logps, token_logps
from latentrl.models.thinking.soft import soft_forward, soft_generate, soft_step_logps


class SoftThinking:
    name = "soft"
    latent_markers = False
    keeps_steps = True

    def generate(self, model, prompts, thinking, *, exploration, eos_token_id, pad_token_id, num_generations=1,
                 max_new_tokens=64, temperature=0.0, top_p=1.0, seeds=None, generator=None, cache_implementation="dynamic",
                 torch_compile=False, compact_at=0.25):  # fmt: skip
        from latentrl.models.latent import Generation, left_pad

        if not hasattr(exploration, "soft_logits"):
            raise ValueError(f"thinking_mode 'soft' takes exploration none, gumbel, soft_gaussian or dirichlet, not "
                             f"{type(exploration).__name__}")  # fmt: skip
        rows = [p for p in prompts for _ in range(num_generations)]
        prompt_ids, prompt_mask = (t.to(model.device) for t in left_pad(rows, pad_token_id))
        seeds = torch.arange(len(rows)) if seeds is None else seeds
        tokens, logps, trace = soft_generate(model, prompt_ids, prompt_mask, settings=thinking.soft_settings(),
                                             noise=exploration, seeds=seeds, eos_token_id=eos_token_id,
                                             pad_token_id=pad_token_id, max_new_tokens=max_new_tokens,
                                             temperature=temperature, top_p=top_p, generator=generator,
                                             compact_at=compact_at, cache_implementation=cache_implementation,
                                             torch_compile=torch_compile)  # fmt: skip
        is_eos = (tokens == eos_token_id) & ~trace.soft_mask
        after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
        tokens = tokens.masked_fill(after_eos, pad_token_id)
        no_latent = torch.zeros_like(prompt_ids, dtype=torch.bool)
        return Generation(prompt_ids, prompt_mask, no_latent, tokens, (~after_eos).long(), logps.masked_fill(after_eos, 0.0),
                          ~is_eos.any(1), None, seeds, soft=trace)  # fmt: skip

    def completion_logps(self, model, record, exploration, temperature: float, head=FULL_POLICY, forward=None):
        """One forward over prompt + completion (the soft inputs rebuilt from the record), the rows of a prompt
        sharing its prefill for the full policy; on a plain head the forward stops at the hidden states and the
        head runs in vocabulary chunks for the answer tokens and the soft steps' kept ids (``head_token_logps``:
        no ``[B, T, V]`` tensor), else the model's logits are read. ``forward``: what runs the model's calls."""
        soft, P, chunked = record.soft, record.prompt_ids.shape[1], plain_head(model)
        with (read_out_hidden if chunked else read_out)(model, head) as policy:
            out = soft_forward(model, record.prompt_ids, record.prompt_mask, record.completion_ids, record.completion_mask,
                               soft, logits_from=P - 1, share_prefill=head.full, hidden_only=chunked, forward=forward)  # fmt: skip
        read = _chunked_logps if chunked else _logits_logps  # [B, T]: the positions that chose each step
        answer, kept, entropy = read(model, policy(out.hidden if chunked else out.logits)[:, :-1], record, temperature)
        return LogProbs(torch.where(soft.soft_mask, soft_step_logps(kept, soft), answer), entropy)

    def loss_mask(self, record, exploration) -> torch.Tensor:
        """Without noise a soft step is no action (it is a function of the prefix): only the tokens count.
        An end-of-thinking token forced by the cap or Cold Stop was not chosen by the policy: it never counts."""
        mask = record.completion_mask * (~record.soft.forced).long()
        if not record.soft.stochastic:
            return mask * (~record.soft.soft_mask).long()
        return mask


def _effective(temperature: float) -> float:
    return temperature if temperature > 0 else 1.0  # T = 0 (greedy) scores at T = 1


def _chunked_logps(model, hidden, record, temperature: float):
    """``hidden [B, T, D]`` -> ``(answer token logps [B, T], kept ids' logps [B, T, k], entropy [B, T])``: the
    answer tokens at ``temperature``, the soft steps' kept ids at the soft temperature, from one pass of the
    chunked head over the ``1 + k`` ids of each position when the two temperatures agree."""
    ids, kept, soft_T = record.completion_ids, record.soft.ids, record.soft.settings.temperature  # [B, T], [B, T, k]
    if _effective(soft_T) == _effective(temperature):
        logps, entropy = model_head_logps(model, hidden, torch.cat([ids[..., None], kept], -1), temperature)
        return logps[..., 0], logps[..., 1:], entropy
    answer, entropy = model_head_logps(model, hidden, ids, temperature)
    return answer, model_head_logps(model, hidden, kept, soft_T)[0], entropy


def _logits_logps(model, logits, record, temperature: float):
    """As :func:`_chunked_logps`, from the logits ``[B, T, V]``."""
    answer, entropy = token_logps(logits, record.completion_ids, temperature)
    kept = record.soft.ids  # [B, T, k]
    _, scaled, lse = selected_logps(logits, kept[..., 0], record.soft.settings.temperature)
    return answer, scaled.gather(-1, kept) - lse[..., None], entropy
