"""Token sampling with one counter-based random stream per row.

Every draw of row ``b`` at decoding step ``t`` is a pure function of the row's key and ``t``::

    key_b = splitmix64(seed_b ^ mix(base))   seed_b: the row's rollout seed; base: one draw of the call's generator
    u_bt  = two hashed 24-bit uniforms of (key_b, "sample", t), joined into one in [0, 1)   (48 bits, float64)
    token = the first id whose cumulative probability exceeds u_bt * sum(p)               (inverse CDF)

So a row's tokens do not depend on the other rows of the batch, on their order, on how often the
host checks for finished rows, or on whether finished rows have left the batch (the engine drops
them); the generator advances by exactly one draw per call. A decoding loop hashes its draws for
many steps at once (``draw_table``: one vectorised hash per block of steps instead of one per step).
The bits come from the exploration noise's stream (``latentrl.exploration.stream``), so they are the
same on every device; the float cumulative sum is not bit-identical across devices, so a draw within
rounding of a boundary can pick the neighbouring id there.

Shape legend: ``B`` rows, ``V`` vocabulary.
"""

from __future__ import annotations

import torch

from latentrl.exploration.stream import SITE_IDS, hash_uniform, splitmix64


def sampling_keys(seeds: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B]`` row keys from the rows' seeds and one draw of ``generator`` (the global generator when None)."""
    device = generator.device if generator is not None else torch.device("cpu")
    base = torch.randint(0, 2**62, (1,), generator=generator, device=device, dtype=torch.long)
    # mixed first: a generator seeded as the rollout seeds were draws base == seeds[0], which would give row 0
    # the key of 0 on every step
    return splitmix64(seeds.long().to(device) ^ splitmix64(base ^ SITE_IDS["sample"]))


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs [B, V]`` with the ids past the smallest prefix (most likely first) reaching ``top_p`` set to 0."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(dim=-1, descending=True)
    outside = sorted_p.cumsum(-1) - sorted_p > top_p  # the first id is always kept
    return torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(outside, 0.0))


def row_uniforms(keys: torch.Tensor, step: int) -> torch.Tensor:
    """``[B]`` float64 uniforms in ``[0, 1)`` with 48 random bits, the rows' draws of decoding ``step``."""
    u = hash_uniform(keys, SITE_IDS["sample"], 0, step, 2).double()  # [B, 2], multiples of 2**-24
    return u[:, 0] + u[:, 1] * 2.0**-24


def draw_table(keys: torch.Tensor, steps: int, first: int = 0) -> torch.Tensor:
    """``[B, steps]`` float64: row ``b``'s draws of decoding steps ``first .. first + steps - 1``, bit for bit
    ``row_uniforms(keys, t)[b]``, in one hash over all of them (a decoding loop then reads a column a step)."""
    B = keys.shape[0]
    t = torch.arange(first, first + steps, device=keys.device).repeat(B)  # [B * steps], row-major
    u = hash_uniform(keys.repeat_interleave(steps), SITE_IDS["sample"], 0, t, 2).double().view(B, steps, 2)
    return u[..., 0] + u[..., 1] * 2.0**-24


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The id ``i`` with ``F(i-1) <= u * F(V-1) < F(i)``, ``F`` the cumulative sum: ``[B, V]``, ``[B]`` -> ``[B]``.
    An id of probability 0 is never chosen (its ``F(i) = F(i-1)``)."""
    cdf = probs.double().cumsum(-1)  # [B, V]
    target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)  # [B, 1], below the total since u < 1
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)  # first F(i) > target


def sample_next(
    logits: torch.Tensor,  # [B, V]
    temperature: float,
    top_p: float = 1.0,
    u: torch.Tensor | None = None,  # [B] the rows' draws of this step (row_uniforms, or a column of draw_table)
) -> torch.Tensor:  # [B]
    """Greedy when ``temperature == 0``; else nucleus sampling from ``softmax(logits / temperature)`` with
    row ``b``'s draw ``u[b]``."""
    if temperature == 0:
        return logits.argmax(-1)
    if u is None:
        raise ValueError("sampling at temperature > 0 needs the rows' draws (row_uniforms(sampling_keys(...), step))")
    probs = nucleus(torch.softmax(logits.float() / temperature, dim=-1), top_p)
    return inverse_cdf(probs, u.to(logits.device))
