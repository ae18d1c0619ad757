"""Soft thinking (Zhang et al. 2025) and SofT-GRPO's reparameterised log-prob (Zheng & Lee 2025).

A thinking step feeds back a mixture of token embeddings instead of one token (DESIGN §2.3)::

    p   = softmax(z_t / T)                          next-token distribution of step t      [B, V]
    idx, p~ = top-k of p, then the smallest prefix reaching top_p, renormalised             [B, k]
    g'  = log(p~ + 1e-6) + clamp(Gumbel(0, 1), -1.5, 3)     (exploration=gumbel)           [B, k]
    g'  = log p~                                             (exploration=none: Soft Thinking)
    y'  = softmax(g' / tau)                                  (tau = gumbel_tau, or 1)
    e_t = sum_i y'_i E[idx_i]                                next input                      [B, D]
    token_t = idx[argmax g']          the step's token: a Gumbel-max sample of p~ (top-1 without noise)

Thinking ends when ``token_t`` is the end-of-thinking token (then fed as an ordinary token), at
``max_thinking_steps``, or by Cold Stop (entropy of p below ``cold_stop_entropy`` for
``cold_stop_window`` consecutive steps). The answer that follows is ordinary sampled tokens.
Ids dropped by top-p keep their column with ``g' = -inf`` (weight 0, never chosen, not in the log-prob).

In the update the inputs are rebuilt from the recorded ``(idx, g')`` and detached; one forward over
the whole sequence gives every step's logits (the inputs no longer depend on the outputs), and a
step's log-prob is the Gumbel log-density of its recorded noise (``soft_token_logprob``).

Shape legend: ``B`` rows, ``V`` vocabulary, ``k`` kept ids, ``D`` hidden size, ``P`` prompt
columns, ``T`` completion positions (thinking steps, then answer tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentrl.errors import FiniteWatch

EPS = 1e-6  # the reference's log(p + 1e-6)
ON_BOUND = 1e-4  # |z - bound| below this: a draw clamped when recorded, on the bound up to float rounding


# ---------------------------------------------------------------------------------------------- the math


def filter_top_k_top_p(logits: torch.Tensor, k: int, top_p: float, temperature: float = 1.0):
    """``logits [B, V]`` -> ``(idx [B, k], p~ [B, k], entropy [B])``: the k most likely ids, those past
    the smallest prefix reaching ``top_p`` given weight 0, the rest renormalised; entropy of the full p."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # [B, V]
    entropy = -(logp.exp() * logp).sum(-1)  # [B]
    top_logp, idx = logp.topk(k, dim=-1)  # [B, k], descending
    top = top_logp.exp()  # [B, k]
    outside = top.cumsum(-1) - top >= top_p  # the first id is always kept
    p = top.masked_fill(outside, 0.0)
    return idx, p / p.sum(-1, keepdim=True), entropy


def mixture_embedding(table: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``e = sum_i w_i E[idx_i]``: ``table [V, D]``, ``idx [..., k]``, ``weights [..., k]`` -> ``[..., D]``."""
    return torch.einsum("...k,...kd->...d", weights.to(table.dtype), table[idx])


def soft_token_logprob(
    logits: torch.Tensor,  # [B, V] logits of the step under theta
    ids: torch.Tensor,  # [B, k] the recorded kept ids
    noisy_logits: torch.Tensor,  # [B, k] the recorded g' (-inf: an id top-p dropped)
    temperature: float = 1.0,
    reduce: str = "mean",
    clamp: tuple[float, float] | None = (-1.5, 3.0),
    min_logp: float | None = -3.0,
) -> torch.Tensor:  # [B]
    """Log-density of a soft thinking step's recorded Gumbel noise under theta (SofT-GRPO): :func:`soft_logprob`
    of ``log softmax(logits / T)`` at the recorded ids."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, ids)  # [B, k]
    return soft_logprob(logp, noisy_logits, reduce, clamp, min_logp)


def soft_logprob(
    logp: torch.Tensor,  # [..., k] log softmax(logits / T) at the recorded kept ids, under theta
    noisy_logits: torch.Tensor,  # [..., k] the recorded g' (-inf: an id top-p dropped)
    reduce: str = "mean",
    clamp: tuple[float, float] | None = (-1.5, 3.0),
    min_logp: float | None = -3.0,
) -> torch.Tensor:  # [...]
    """Log-density of a soft thinking step's recorded Gumbel noise, from the kept ids' log-probs::

        p^_i = softmax(logits / T) renormalised over the recorded ids
        z_i  = clamp(g'_i - log(p^_i + 1e-6), lo, hi)        (``clamp=None``: no clamp; see below)
        l_i  = -z_i - exp(-z_i)                              (the Gumbel(0, 1) log-density at z_i)
        log pi(step) = mean (``reduce="sum"``: sum) of l_i over the ids with log p^_i > min_logp
                       (``min_logp=None``: every recorded id)

    Gradients reach theta through p^. A step with no id left by the filter has log-prob 0. The ``[..., k]``
    arithmetic runs in float64 (exp(-z) is steep without the clamp); the result is float32.

    A draw the sampler clamped (about 6% of the kept ids) recomputes, under the sampling weights, to z on the
    bound up to float rounding; in exact arithmetic the clamp passes its gradient there. So a z within
    ``ON_BOUND`` of a bound is kept as it is, so that float32 rounding (a compiled forward, another batch shape
    or thread count: about 1e-6) cannot decide whether the gradient passes; z moves by less than ``ON_BOUND``
    and l_i by at most (e^1.5 - 1) ``ON_BOUND``. Under bf16 / fp16 autocast the recomputed logits differ from the
    rollout's by about 1e-2, and rounding still decides for the on-bound draws there.
    """
    kept = torch.isfinite(noisy_logits)  # [..., k]
    log_p_hat = torch.log_softmax(logp.double().masked_fill(~kept, float("-inf")), dim=-1)  # [..., k]
    z = noisy_logits.double() - torch.log(log_p_hat.exp() + EPS)  # [..., k]
    z = torch.where(kept, z, 0.0)  # a dropped id's -inf would make l = inf - inf, NaN in the backward
    if clamp is not None:
        lo, hi = clamp
        z = torch.where((z > lo - ON_BOUND) & (z < hi + ON_BOUND), z, z.clamp(lo, hi))
    ell = -z - torch.exp(-z)  # [..., k]
    use = kept if min_logp is None else kept & (log_p_hat > min_logp)  # [..., k]
    total = torch.where(use, ell, torch.zeros_like(ell)).sum(-1)  # [...]
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    return (total if reduce == "sum" else total / use.sum(-1).clamp(min=1)).float()


# ---------------------------------------------------------------------------------------------- records


@dataclass
class SoftSettings:
    """How soft thinking runs (the ``soft_*`` keys of ``latentrl.json``, eval and grpo)."""

    top_k: int = 5
    top_p: float = 0.95
    temperature: float = 1.0
    max_thinking_steps: int | None = None  # None: up to the completion length cap
    end_of_thinking_id: int | None = None
    cold_stop_entropy: float = 0.0  # 0: off
    cold_stop_window: int = 256
    logprob_reduce: str = "mean"
    logprob_clamp: tuple[float, float] | None = (-1.5, 3.0)
    logprob_min: float | None = -3.0


@dataclass
class SoftTrace:
    """What a batch of soft rollouts recorded to replay its thinking steps exactly."""

    soft_mask: torch.Tensor  # [B, T] bool, True at soft thinking steps
    ids: torch.Tensor  # [B, T, k] kept ids of each step (zeros off the soft steps)
    noisy_logits: torch.Tensor  # [B, T, k] g' of each step
    tau: float  # y' = softmax(g' / tau)
    settings: SoftSettings
    entropy: torch.Tensor  # [B, T] entropy of p at each soft step (0 elsewhere)
    differs_from_top1: torch.Tensor  # [B, T] bool, the step's token is not the top-1 id
    forced: torch.Tensor  # [B, T] bool, an end-of-thinking token forced by the cap or Cold Stop
    stochastic: bool = True  # the steps carry noise (a policy's actions); False: plain Soft Thinking

    def select(self, rows) -> "SoftTrace":
        return SoftTrace(self.soft_mask[rows], self.ids[rows], self.noisy_logits[rows], self.tau, self.settings,
                         self.entropy[rows], self.differs_from_top1[rows], self.forced[rows], self.stochastic)  # fmt: skip

    def weights(self) -> torch.Tensor:  # [B, T, k]
        return torch.softmax(self.noisy_logits / self.tau, dim=-1).nan_to_num(0.0)


# ---------------------------------------------------------------------------------------------- the loop


@torch.no_grad()
def soft_generate(model, prompt_ids, prompt_mask, *, settings: SoftSettings, noise, seeds, eos_token_id: int,
                  pad_token_id: int, max_new_tokens: int, temperature: float, top_p: float, generator=None,
                  compact_at: float = 0.25, cache_implementation: str = "dynamic", torch_compile: bool = False):  # fmt: skip
    """Soft thinking then answer decoding, batched, on the KV cache.

    Each position t holds, per row, a soft thinking step (mixture input), the end-of-thinking token,
    an answer token, or padding after eos. Returns ``(tokens [B, T], sample_logps [B, T], trace)``.
    As in ``latentrl.models.latent.generate``: the rows of a prompt run its prefill once and rows that finished
    leave the batch, or, with ``cache_implementation="static"``, every row is prefilled and stays to the end;
    ``torch_compile`` applies to the steps. The noise and the answer tokens' draws are functions of each row's
    seed, so none of these settings changes the result.
    """
    from latentrl.models.latent import CACHE_KWARG, _LiveRows, compiled_step, latent_forward
    from latentrl.models.sampling import sample_next, sampling_keys

    table = model.get_input_embeddings().weight  # [V, D]
    B, device, static = prompt_ids.shape[0], prompt_ids.device, cache_implementation == "static"
    keys = sampling_keys(seeds, generator).to(device) if temperature > 0 else None  # the answer tokens' draws
    live, cache = _LiveRows.start(model, prompt_mask, keys, max_new_tokens, cache_implementation)
    decode_step = compiled_step(model, static) if torch_compile else model
    no_latent = torch.zeros_like(prompt_ids, dtype=torch.bool)  # (the noise acts on the steps, not the model)
    logits = latent_forward(model, prompt_ids, prompt_mask, no_latent, last_only=True, cache=cache, share_prefill=True).logits[:, -1]
    state = _LoopState.start(B, device, settings, max_new_tokens, pad_token_id)
    compact_at = 0.0 if static else compact_at
    finite = FiniteWatch(device)
    for t in range(max_new_tokens):
        logits = finite(logits)
        idx, p, entropy = filter_top_k_top_p(logits, settings.top_k, settings.top_p, settings.temperature)
        g, tau = noise.soft_logits(p, seeds, t)  # [b, k]
        answer = sample_next(logits, temperature, top_p, live.draw(t))  # [b]
        tok, soft_now = state.advance(t, idx, g, entropy, answer, logits, temperature, eos_token_id, pad_token_id)
        finished = int(state.done.sum())
        if finished == len(state.rows):
            break
        if compact_at > 0 and finished >= compact_at * len(state.rows):  # finished rows leave the batch
            keep = state.keep_unfinished()
            live.select(keep)
            cache.batch_select_indices(keep)
            tok, soft_now, idx, g, seeds = tok[keep], soft_now[keep], idx[keep], g[keep], seeds[keep.to(seeds.device)]
        x = torch.where(soft_now[:, None], mixture_embedding(table, idx, torch.softmax(g / tau, -1).nan_to_num(0.0)),
                        table[tok])  # [b, D]  fmt: skip
        live.open_slot(t)
        out = decode_step(inputs_embeds=x[:, None], attention_mask=live.mask, position_ids=live.next_pos, use_cache=True,
                          **{CACHE_KWARG: cache})  # fmt: skip
        logits, live.next_pos = out.logits[:, -1], live.next_pos + 1
    finite.check()
    return state.finish(tau, settings, stochastic=getattr(noise, "stochastic", True))


@dataclass
class _LoopState:
    """Per-row phase of the soft loop for the rows still in the batch, and what every row has recorded.
    A row that finished records its defaults (padding, zeros, False), so leaving the batch changes nothing."""

    thinking: torch.Tensor  # [b] bool
    done: torch.Tensor  # [b] bool
    low_entropy_run: torch.Tensor  # [b] consecutive steps under the Cold Stop threshold
    steps: torch.Tensor  # [b] soft steps taken
    rows: torch.Tensor  # [b] row of the full batch
    settings: SoftSettings
    cap: int
    pad_id: int
    max_new_tokens: int
    record: dict  # name -> [B, max_new_tokens, ...], allocated at the first step
    length: int = 0  # positions recorded

    @classmethod
    def start(cls, B: int, device, settings: SoftSettings, max_new_tokens: int, pad_id: int) -> "_LoopState":
        false = torch.zeros(B, dtype=torch.bool, device=device)
        cap = settings.max_thinking_steps if settings.max_thinking_steps is not None else max_new_tokens
        zeros = torch.zeros(B, dtype=torch.long, device=device)
        return cls(~false, false.clone(), zeros, zeros.clone(), torch.arange(B, device=device), settings, cap, pad_id,
                   max_new_tokens, {})  # fmt: skip

    def keep_unfinished(self) -> torch.Tensor:
        """Drop the finished rows from the live state; returns the indices kept (into the current rows)."""
        keep = (~self.done).nonzero().flatten()
        self.thinking, self.done, self.low_entropy_run = self.thinking[keep], self.done[keep], self.low_entropy_run[keep]
        self.steps, self.rows = self.steps[keep], self.rows[keep]
        return keep

    def _write(self, t: int, **values) -> None:
        r = self.record
        if not r:  # full-batch tensors holding a finished row's defaults (at t = 0 every row is live)
            for name, v in values.items():
                fill = self.pad_id if name == "tokens" else 0
                r[name] = torch.full((len(self.rows), self.max_new_tokens, *v.shape[1:]), fill, dtype=v.dtype, device=v.device)
        for name, v in values.items():
            r[name][self.rows, t] = v
        self.length = t + 1

    def advance(self, t, idx, g, entropy, answer, logits, temperature, eos_id, pad_id):
        """Choose each row's token at position t and update the phases; returns ``(tok [b], soft_now [b])``."""
        s = self.settings
        step_tok = idx.gather(-1, g.argmax(-1, keepdim=True)).squeeze(-1)  # [b] Gumbel-max (or top-1) id
        self.low_entropy_run = torch.where(entropy < s.cold_stop_entropy, self.low_entropy_run + 1, 0)
        forced = (self.steps >= self.cap) | ((s.cold_stop_entropy > 0) & (self.low_entropy_run >= s.cold_stop_window))
        ends = self.thinking & ((step_tok == s.end_of_thinking_id) | (step_tok == eos_id) | forced)
        soft_now = self.thinking & ~ends
        ends_with = torch.where(step_tok == eos_id, step_tok, torch.full_like(step_tok, s.end_of_thinking_id))
        tok = torch.where(soft_now, step_tok, torch.where(ends, ends_with, answer))
        tok = torch.where(self.done, torch.full_like(tok, pad_id), tok)
        from latentrl.models.thinking.logprobs import selected_logps

        logp = selected_logps(logits, tok, temperature)[0]
        self._write(t, tokens=tok, logps=torch.where(soft_now | self.done, torch.zeros_like(logp), logp), soft=soft_now,
                    ids=torch.where(soft_now[:, None], idx, torch.zeros_like(idx)),
                    noisy=torch.where(soft_now[:, None], g, torch.zeros_like(g)),
                    entropy=torch.where(soft_now, entropy, torch.zeros_like(entropy)),
                    differs=soft_now & (step_tok != idx[:, 0]),
                    forced=ends & forced & (step_tok != s.end_of_thinking_id) & (step_tok != eos_id))  # fmt: skip
        self.steps = self.steps + soft_now.long()
        self.done = self.done | (~self.thinking & (tok == eos_id)) | (ends & (step_tok == eos_id))
        self.thinking = soft_now
        return tok, soft_now

    def finish(self, tau: float, settings: SoftSettings, stochastic: bool):
        r = {k: v[:, : self.length] for k, v in self.record.items()}  # [B, T, ...]
        trace = SoftTrace(r["soft"], r["ids"], r["noisy"], tau, settings, r["entropy"], r["differs"], r["forced"], stochastic)
        return r["tokens"], r["logps"], trace


def soft_forward(model, prompt_ids, prompt_mask, completion_ids, completion_mask, trace: SoftTrace, *,
                 logits_from: int, share_prefill: bool = False, hidden_only: bool = False, forward=None):  # fmt: skip
    """The teacher-forced forward over prompt + completion with the soft steps' inputs rebuilt from the record
    and detached (the inputs no longer depend on the outputs, so one forward gives every step's logits):
    ``latent_forward``'s output for positions ``[logits_from, P+T)``. ``share_prefill``: the rows of one
    prompt run it once (the caller promises that no hook reads the prompt's per-row activations). ``forward``:
    what runs the model's calls (None: ``model``)."""
    from latentrl.models.latent import latent_forward

    embed = model.get_input_embeddings()
    ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+T]
    mask = torch.cat([prompt_mask, completion_mask], dim=1)  # [B, P+T]
    x = embed(ids)  # [B, P+T, D]
    P = prompt_ids.shape[1]
    mix = mixture_embedding(embed.weight, trace.ids, trace.weights()).detach()  # [B, T, D]
    x = torch.cat([x[:, :P], torch.where(trace.soft_mask[..., None], mix, x[:, P:])], dim=1)
    return latent_forward(model, ids, mask, torch.zeros_like(ids, dtype=torch.bool), prompt_len=P,
                          logits_from=logits_from, share_prefill=share_prefill, hidden_only=hidden_only,
                          inputs_embeds=x, forward=forward)  # fmt: skip


def soft_completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, trace: SoftTrace,
                           full: bool = False, policy=None):  # fmt: skip
    """Logits of every completion position ``[B, T, V]`` (``full``: of every position, ``[B, P+T, V]``) through
    :func:`soft_forward`. ``policy`` maps the forward's logits to the policy's (``read_out``'s, for BuPO)."""
    start = 0 if full else prompt_ids.shape[1] - 1
    logits = soft_forward(model, prompt_ids, prompt_mask, completion_ids, completion_mask, trace, logits_from=start).logits
    logits = logits if policy is None else policy(logits)
    return logits if full else logits[:, :-1]  # [B, T, V]: the positions that chose each completion step


def soft_step_logps(logp: torch.Tensor, trace: SoftTrace) -> torch.Tensor:
    """:func:`soft_logprob` at every position: ``logp [B, T, k]`` (log-probs of the recorded kept ids, at the
    soft temperature) -> ``[B, T]`` (use where ``soft_mask``)."""
    s = trace.settings
    noisy = trace.noisy_logits.masked_fill(~trace.soft_mask[..., None], float("-inf"))  # [B, T, k]
    return soft_logprob(logp, noisy, s.logprob_reduce, s.logprob_clamp, s.logprob_min)
