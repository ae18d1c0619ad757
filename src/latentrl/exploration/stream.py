"""The one seeded noise stream every exploration source draws from.

Each draw is a pure function of integers: ``(rollout seed, stream, layer, step, unit)``. A row's
noise therefore depends on its own seed only — not on the other rows of the batch, their order, or
the device — and the update replays it bit for bit (common random numbers). The bits come from a
counter-based hash (splitmix64, Steele et al. 2014) in int64 torch ops::

    key  = mix(mix(mix(mix(seed) ^ stream) ^ layer) ^ step)       # one key per (row, stream, layer, step)
    u[j] = top 24 bits of mix(key + j * gamma) / 2**24            # unit j -> uniform in [0, 1)

Streams (``SITE_IDS``): the dropout sites (thought, mlp, attn, block), the two uniforms of the
Gaussian's Box-Muller, the Gumbel noise of soft thinking, and its ablations' Gaussian and Gamma draws,
and the decoding's token draws (``latentrl.models.sampling``).
"""

from __future__ import annotations

import torch

SITE_IDS = {"thought": 0, "mlp": 1, "attn": 2, "block": 3, "gauss_a": 4, "gauss_b": 5, "gumbel": 6, "soft_gauss_a": 7,
            "soft_gauss_b": 8, "gamma_x": 9, "gamma_y": 10, "gamma_u": 11, "gamma_boost": 12, "sample": 13}  # fmt: skip



def _signed(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


GAMMA = _signed(0x9E3779B97F4A7C15)  # splitmix64's increment (golden ratio)
MIX1 = _signed(0xBF58476D1CE4E5B9)
MIX2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic on negatives)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function on int64 tensors; products wrap modulo 2**64."""
    z = z + GAMMA
    z = (z ^ _shr(z, 30)) * MIX1
    z = (z ^ _shr(z, 27)) * MIX2
    return z ^ _shr(z, 31)


def hash_uniform(seeds: torch.Tensor, site: int, layer: int, step: int | torch.Tensor, width: int) -> torch.Tensor:
    """Uniforms in ``[0, 1)`` (multiples of 2**-24, float32): ``seeds [B]`` -> ``[B, width]``.

    Row ``b`` depends only on ``seeds[b]`` and the integers ``(site, layer, step, unit)``, and the
    bits are the same on every device. ``step`` may be a ``[B]`` tensor, one step per row (many steps'
    draws in one call).
    """
    key = splitmix64(seeds.long())  # [B]
    for part in (site, layer, step):
        key = splitmix64(key ^ part)
    units = torch.arange(width, dtype=torch.long, device=seeds.device)  # [W]
    z = splitmix64(key[:, None] + units[None, :] * GAMMA)  # [B, W]
    return _shr(z, 40).to(torch.float32) * 2.0**-24




def open_uniform(seeds: torch.Tensor, stream: int, layer: int, step: int, width: int) -> torch.Tensor:
    """Uniforms in the open interval (0, 1) (bin centres of the 2**-24 grid): ``[B]`` -> ``[B, width]``."""
    return hash_uniform(seeds, stream, layer, step, width) + 2.0**-25
