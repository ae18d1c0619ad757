"""A dynamic KV cache that reserves its positions up front, for generation.

HF's ``DynamicLayer`` grows by concatenation: every decoding step copies the whole cache of every layer into
a new tensor (on the CPU also a fresh allocation, paged in anew), which profiles put at a tenth of a decoding
step. Generation knows how many positions it will need (prompt + new tokens), so ``ReservedLayer`` allocates
them once, writes each step's keys and values in place and hands attention a view of the filled prefix:
the same values as the growing cache (attention over the same positions, no full-width mask as the static
cache needs), without the copies. Rows still leave the batch (``batch_select_indices``) and a prompt's prefill
is still shared (its rows copied to the group).

Only for a forward without gradients: an in-place write into a buffer whose earlier view autograd saved
would fail its version check (loudly), so the log-prob recomputation keeps HF's growing cache.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` over buffers of ``capacity`` positions (grown by doubling if ever exceeded);
    ``keys`` / ``values`` are views ``[B, H, length, D]`` of them."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self.key_buffer = self.value_buffer = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if torch.is_grad_enabled() and (key_states.requires_grad or value_states.requires_grad):
            raise RuntimeError("ReservedLayer writes in place: use it without gradients (generation only)")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.key_buffer, self.value_buffer = (_empty_like(x, max(self.capacity, x.shape[-2])) for x in (key_states, value_states))
        n = key_states.shape[-2]
        if self.length + n > self.key_buffer.shape[-2]:
            self.key_buffer, self.value_buffer = (_grown(b, self.length, 2 * (self.length + n)) for b in (self.key_buffer, self.value_buffer))
        self.key_buffer[:, :, self.length : self.length + n] = key_states
        self.value_buffer[:, :, self.length : self.length + n] = value_states
        self.length += n
        return self._views()

    def _views(self):
        self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self.key_buffer, self.value_buffer = (b.repeat_interleave(repeats, dim=0) for b in (self.key_buffer, self.value_buffer))
            self._views()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative number of tokens to remove, got {tokens_to_remove}")
        if tokens_to_remove < 0 and self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._views()

    def reset(self) -> None:
        super().reset()
        self.length, self.key_buffer, self.value_buffer = 0, None, None


def _empty_like(x: torch.Tensor, positions: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-2], positions, x.shape[-1]))


def _grown(buffer: torch.Tensor, length: int, positions: int) -> torch.Tensor:
    out = _empty_like(buffer, positions)
    out[:, :, :length] = buffer[:, :, :length]
    return out


def reserved_cache(model, capacity: int) -> DynamicCache:
    """The model's ``DynamicCache`` with each plain ``DynamicLayer`` replaced by a ``ReservedLayer`` of
    ``capacity`` positions (sliding-window and other layer kinds are kept as they are)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [ReservedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
