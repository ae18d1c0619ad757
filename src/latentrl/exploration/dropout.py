"""Dropout-GRPO's noise source: seeded Bernoulli masks on the latent recurrence (DESIGN §2.2).

Rollout ``k`` draws one mask ``m_k`` (keep probability ``1 - p``, kept units scaled by ``1/(1-p)``)
and, with ``scope="rollout"``, holds it fixed across every latent step (variational / MC dropout,
Gal & Ghahramani 2016). The mask is never stored: it is a pure function of the row's seed, so the
update replays it exactly (common random numbers) whatever the batch composition or row order.

Mask bits come from a counter-based hash (splitmix64, Steele et al. 2014) evaluated in int64 torch
ops on any device::

    key  = mix(mix(mix(mix(seed) ^ site) ^ layer) ^ step)        # one key per (row, site, layer, step)
    u[j] = top 24 bits of mix(key + j * gamma) / 2**24            # unit j -> uniform in [0, 1)
    keep = u >= p

Shape legend: ``B`` rows (rollouts), ``S`` sequence positions, ``W`` width of a masked site,
``D`` hidden size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from latentrl.exploration.stream import GAMMA, SITE_IDS, hash_uniform, splitmix64  # noqa: F401  (re-exported)

SITES = ("thought", "mlp", "attn", "block")
SCOPES = ("rollout", "step")
PHASES = ("prefill", "latent", "answer")
PHASE_STEP = {"prefill": -1, "answer": -2}  # step ids of the non-latent phases under scope "step"


def dropout_mask(seeds: torch.Tensor, p: float, site: int, layer: int, step: int, width: int) -> torch.Tensor:
    """Inverted-dropout mask ``[B, width]`` (float32): 0 with probability ``p``, else ``1/(1-p)``."""
    keep = hash_uniform(seeds, site, layer, step, width) >= p  # [B, W]
    return keep.to(torch.float32) / (1.0 - p)


# ---------------------------------------------------------------- where the sites live in a HF model

BLOCK_LISTS = ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers", "transformer.blocks")
ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
DOWN_NAMES = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out", "w2")


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder blocks (``transformer.h`` of GPT-2, ``model.layers`` of Llama/Qwen2, ...)."""
    for name in BLOCK_LISTS:
        try:
            blocks = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(blocks, torch.nn.ModuleList):
            return blocks
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and n_layers and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__} (tried {', '.join(BLOCK_LISTS)})")


def _child(module: torch.nn.Module, names: tuple[str, ...]) -> torch.nn.Module | None:
    return next((getattr(module, n) for n in names if isinstance(getattr(module, n, None), torch.nn.Module)), None)


def find_site(model: torch.nn.Module, block: torch.nn.Module, layer: int, site: str) -> torch.nn.Module:
    """The module whose output (``attn``, ``block``) or input (``mlp``: the down projection) is masked."""
    if site == "block":
        return block
    if site == "attn":
        found = _child(block, ATTN_NAMES)
    else:
        mlp = _child(block, MLP_NAMES)
        found = _child(mlp, DOWN_NAMES) if mlp is not None else None
    if found is None:
        where = "attention module" if site == "attn" else "MLP down projection"
        raise ValueError(
            f"dropout site {site!r}: cannot find the {where} of {type(model).__name__} block {layer} "
            f"({type(block).__name__}); supported layouts: GPT-2, Llama, Qwen2 and look-alikes"
        )
    return found


def _mask_first(value, fn):
    """Apply ``fn`` to a tensor, or to element 0 of a tuple (HF attention and some blocks return tuples)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and value and isinstance(value[0], torch.Tensor):
        return (fn(value[0]), *value[1:])
    raise TypeError(f"cannot apply a dropout mask to a {type(value).__name__}")


# ---------------------------------------------------------------- the exploration source


@dataclass
class DropoutExploration:
    """Seeded dropout masks on the latent recurrence (Dropout-GRPO); see the module docstring."""

    p: float = 0.1
    """Drop probability; kept units are scaled by ``1/(1-p)``."""
    scope: str = "rollout"
    """``"rollout"``: one mask per row held over all latent steps (Dropout-GRPO); ``"step"``: a fresh mask per latent step (ablation)."""
    sites: tuple[str, ...] = ("thought",)
    """Any of ``"thought"`` (the fed-back hidden state), ``"mlp"`` (MLP hidden units, the input of the
    down projection), ``"attn"`` (attention output, after its output projection), ``"block"`` (each
    decoder block's output)."""
    cover_prefill: bool = False
    """Module-site masks also act during the prompt prefill."""
    cover_answer: bool = False
    """Module-site masks also act during answer decoding (and the answer part of recomputation)."""

    def __post_init__(self) -> None:
        self.sites = (self.sites,) if isinstance(self.sites, str) else tuple(self.sites)
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {self.p}")
        if self.scope not in SCOPES:
            raise ValueError(f"dropout scope must be one of {SCOPES}, got {self.scope!r}")
        unknown = [s for s in self.sites if s not in SITES]
        if unknown or not self.sites:
            raise ValueError(f"dropout sites must be a non-empty subset of {SITES}, got {self.sites!r}")
        # session state (not config): the rows' seeds, the current phase/step, masks built so far
        self._seeds: torch.Tensor | None = None
        self._phase: str | None = None
        self._step = 0
        self._cache: dict[tuple, torch.Tensor] = {}
        self._kept: list[tuple[torch.Tensor, int]] = []  # (units kept, units) per mask built

    @property
    def module_sites(self) -> tuple[str, ...]:
        return tuple(s for s in self.sites if s != "thought")

    @property
    def perturbs_prefill(self) -> bool:
        return self.cover_prefill and self.p > 0 and bool(self.module_sites)

    # -- protocol

    @contextmanager
    def session(self, model: torch.nn.Module, seeds: torch.Tensor) -> Iterator[DropoutExploration]:
        """Install the module-site hooks for a batch whose rows carry ``seeds [B]``; removed on exit."""
        if self._seeds is not None:
            raise RuntimeError("DropoutExploration: a session is already active (sessions do not nest)")
        if seeds.dim() != 1:
            raise ValueError(f"seeds must be a 1-D tensor [B], got shape {tuple(seeds.shape)}")
        targets = self._locate(model)  # raises before anything is installed
        handles = []
        try:
            for site, layer, module in targets:
                if site == "mlp":
                    handles.append(module.register_forward_pre_hook(self._input_hook(site, layer)))
                else:
                    handles.append(module.register_forward_hook(self._output_hook(site, layer)))
            self._seeds, self._phase, self._step = seeds.long(), None, 0
            self._cache, self._kept = {}, []
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._seeds, self._phase, self._cache = None, None, {}

    def set_phase(self, phase: str, step: int = 0) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        self._phase, self._step = phase, step

    def thought(self, h: torch.Tensor, step: int) -> torch.Tensor:  # [B, D] -> [B, D]
        if "thought" not in self.sites or self._phase != "latent":
            return h
        return h * self._mask("thought", 0, self._mask_step("latent", step), h)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep the seeds and the masks built so far of ``rows`` only (the masks' statistics keep every row)."""
        self._seeds = self._seeds[rows.to(self._seeds.device)]
        self._cache = {key: mask[rows.to(mask.device)] for key, mask in self._cache.items()}

    def mask_stats(self) -> dict[str, float]:
        """Fraction of units kept over the masks built in the current or last session, and how many."""
        if not self._kept:
            return {"dropout/keep_frac": float("nan"), "dropout/num_masks": 0}
        kept = sum(float(k) for k, _ in self._kept)
        total = sum(n for _, n in self._kept)
        return {"dropout/keep_frac": kept / total, "dropout/num_masks": len(self._kept)}

    # -- internals

    def _locate(self, model: torch.nn.Module) -> list[tuple[str, int, torch.nn.Module]]:
        if not self.module_sites:
            return []
        checkpointing = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5
        if checkpointing is None:
            checkpointing = getattr(model, "is_gradient_checkpointing", False)
        if checkpointing and {"mlp", "attn"} & set(self.module_sites):
            raise ValueError(
                "DropoutExploration: 'mlp'/'attn' sites cannot be used with gradient checkpointing "
                "(the backward recomputation would run outside the dropout session)"
            )
        blocks = decoder_blocks(model)
        return [(s, i, find_site(model, b, i, s)) for s in self.module_sites for i, b in enumerate(blocks)]

    def _mask_step(self, phase: str, step: int) -> int:
        if self.scope == "rollout":
            return 0
        return step if phase == "latent" else PHASE_STEP[phase]

    def _covered(self) -> bool:
        return self._phase == "latent" or (self._phase == "prefill" and self.cover_prefill) or (
            self._phase == "answer" and self.cover_answer
        )

    def _mask(self, site: str, layer: int, step: int, x: torch.Tensor) -> torch.Tensor:
        """Cached mask ``[B, W]`` in ``x``'s dtype and device for ``x [B, ..., W]``."""
        B, W = len(self._seeds), x.shape[-1]
        if x.shape[0] != B:
            raise ValueError(f"dropout: activation has batch {x.shape[0]} but the session has {B} seeds")
        key = (site, layer, step, W, x.device, x.dtype)
        if key not in self._cache:
            mask = dropout_mask(self._seeds.to(x.device), self.p, SITE_IDS[site], layer, step, W)  # [B, W]
            self._kept.append(((mask > 0).sum(), mask.numel()))
            self._cache[key] = mask.to(x.dtype)
        return self._cache[key]

    def _apply(self, x: torch.Tensor, site: str, layer: int) -> torch.Tensor:  # [B, S, W] -> [B, S, W]
        mask = self._mask(site, layer, self._mask_step(self._phase, self._step), x)  # [B, W]
        return x * mask.view(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1])  # broadcast over positions

    def _output_hook(self, site: str, layer: int):
        def hook(module, args, output):
            if self.p == 0 or not self._covered():
                return None
            return _mask_first(output, lambda x: self._apply(x, site, layer))

        return hook

    def _input_hook(self, site: str, layer: int):
        def hook(module, args):
            if self.p == 0 or not self._covered():
                return None
            if not args:
                raise ValueError(f"dropout site {site!r}: {type(module).__name__} was called without a positional input")
            return (self._apply(args[0], site, layer), *args[1:])

        return hook


__all__ = ["DropoutExploration", "decoder_blocks", "dropout_mask", "find_site", "hash_uniform", "splitmix64"]
