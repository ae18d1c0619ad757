"""K rollouts per prompt into one typed record, and the log-probs of its completions.

Shape legend: ``B`` rollouts (prompts x ``G`` generations, grouped), ``P`` prompt columns,
``T`` completion tokens, ``K`` latent steps, ``D`` hidden size.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from latentrl.exploration import Exploration
from latentrl.models import Generation
from latentrl.models.layout import ThinkingConfig, encode_prompt
from latentrl.models.readout import FULL_POLICY, PolicyHead
from latentrl.models.thinking import thinking_mode
from latentrl.models.thinking.logprobs import LogProbs
from latentrl.models.thinking.soft import SoftTrace
from latentrl.rewards import RewardError

RewardFunc = Callable[..., list[float]]


@dataclass
class Rollout:
    """Everything the update needs to replay a batch of rollouts exactly."""

    prompt_ids: torch.Tensor  # [B, P] left padded, latent placeholders included
    prompt_mask: torch.Tensor  # [B, P]
    latent_mask: torch.Tensor  # [B, P] bool
    completion_ids: torch.Tensor  # [B, T]
    completion_mask: torch.Tensor  # [B, T]
    seeds: torch.Tensor  # [B] exploration seed of each rollout (its recorded noise)
    rewards: torch.Tensor  # [B] weighted sum of the reward functions
    reward_parts: dict[str, torch.Tensor]  # name -> [B]
    advantages: torch.Tensor  # [B]
    completions: list[str]  # decoded completions
    truncated: torch.Tensor  # [B] bool
    thoughts: torch.Tensor | None  # [B, K, D] fed-back states of the rollout
    old_logps: torch.Tensor | None = None  # [B, T] under the policy that generated it
    ref_logps: torch.Tensor | None = None  # [B, T] under the frozen reference
    soft: SoftTrace | None = None  # soft thinking: the kept ids and perturbed logits of every thinking step
    loss_mask: torch.Tensor | None = None  # [B, T] positions that are actions (None: completion_mask)

    def select(self, rows: torch.Tensor | slice) -> "Rollout":
        """The sub-record of ``rows`` (a minibatch for the update)."""
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "completions":
                value = [value[i] for i in torch.arange(len(value))[rows].tolist()]
            elif f.name == "reward_parts":
                value = {k: v[rows] for k, v in value.items()}
            elif value is not None:
                value = value.select(rows) if isinstance(value, SoftTrace) else value[rows]
            picked[f.name] = value
        return Rollout(**picked)

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, P + T)``: the rows and columns of the recomputation's forward."""
        return self.prompt_ids.shape[0], self.prompt_ids.shape[1] + self.completion_ids.shape[1]

    @property
    def action_mask(self) -> torch.Tensor:
        """``[B, T]`` the completion positions the policy loss counts."""
        return self.completion_mask if self.loss_mask is None else self.loss_mask


MAX_ABS_REWARD = 1e6  # larger rewards make advantages and policy-gradient terms that overflow float32


def _too_large(name: str, rows: list[int], values: list) -> RewardError:
    return RewardError(f"reward function {name} returned rewards of magnitude above {MAX_ABS_REWARD:g} at rows "
                       f"{rows[:10]}: {values[:10]}; rewards that large overflow float32 gradients, rescale them "
                       "(e.g. to [0, 1])")  # fmt: skip


def _reward_value(name: str, row: int, value: Any) -> float | None:
    """One element of a reward function's output as a float, or None ("does not apply to this row")."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # a 0-d tensor or array, or a numpy scalar
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise RewardError(f"reward function {name} returned a {type(value).__name__} at row {row} ({value!r}); "
                          "return numbers")  # fmt: skip
    if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0):
        raise RewardError(f"reward function {name} returned a nested {type(value).__name__} at row {row} "
                          f"({value!r}); return one number per completion (a flat list)")  # fmt: skip
    if not isinstance(value, (bool, numbers.Real)):
        raise RewardError(f"reward function {name} returned a {type(value).__name__} at row {row} ({value!r}); "
                          "return numbers")  # fmt: skip
    try:
        return float(value)
    except OverflowError as err:  # an int beyond the float range
        raise _too_large(name, [row], [value]) from err


def check_rewards(name: str, values: Any, n: int) -> torch.Tensor:  # [n] float32
    """Validate what reward function ``name`` returned for ``n`` completions; NaN where it returned None.

    Accepted: a list or tuple of numbers (bools count; 0-d tensors and numpy scalars too), a 1-D
    torch tensor or a 1-D numpy array, of length ``n``. A ``None`` element means the function does
    not apply to that row (TRL). Everything else raises :class:`RewardError` naming the function:
    a None result, another container, a tensor/array that is not 1-D, a wrong length, a string
    (numeric or not) or nested list element, a NaN/inf reward, or ``|reward| > MAX_ABS_REWARD``.
    """
    if values is None:
        raise RewardError(f"reward function {name} returned None; return a list of {n} numbers "
                          "(None for a row it does not apply to)")  # fmt: skip
    if isinstance(values, torch.Tensor) or (hasattr(values, "ndim") and hasattr(values, "tolist")):
        if values.ndim != 1:
            raise RewardError(f"reward function {name} returned a {values.ndim}-D {type(values).__name__} of shape "
                              f"{tuple(values.shape)}; return one number per completion (1-D, length {n})")  # fmt: skip
        values = values.tolist()  # Python scalars (a float32 tensor's values exactly)
    elif not isinstance(values, (list, tuple)):
        raise RewardError(f"reward function {name} returned a {type(values).__name__}; return a list of {n} numbers")
    if len(values) != n:
        raise RewardError(f"reward function {name} returned {len(values)} values for {n} completions")
    floats = [_reward_value(name, row, v) for row, v in enumerate(values)]
    bad = [row for row, x in enumerate(floats) if x is not None and not math.isfinite(x)]
    if bad:
        raise RewardError(f"reward function {name} returned non-finite rewards at rows {bad[:10]}: "
                          f"{[values[i] for i in bad[:10]]}")  # fmt: skip
    huge = [row for row, x in enumerate(floats) if x is not None and abs(x) > MAX_ABS_REWARD]
    if huge:
        raise _too_large(name, huge, [values[i] for i in huge])
    return torch.tensor([math.nan if x is None else x for x in floats], dtype=torch.float32)


def score(
    reward_funcs: Sequence[RewardFunc], weights: Sequence[float], prompts: list[str], completions: list[str],
    columns: dict[str, list],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """Weighted sum of TRL-style reward functions ``f(prompts, completions, **columns) -> list[float]``.

    Returns ``(total [B], {name: [B]})`` (float32). Each function's output is validated by
    :func:`check_rewards`; a ``None`` element is NaN in its part and adds nothing to the total (TRL's
    nansum), and a row where every function returned None raises. A function that raises, or
    returns anything else than one finite number (or None) per completion, raises
    :class:`~latentrl.rewards.RewardError` (a ``ValueError``) naming the function and the rows.
    """
    if len(weights) != len(reward_funcs):
        raise RewardError(f"{len(reward_funcs)} reward functions but {len(weights)} reward weights")
    n = len(completions)
    parts: dict[str, torch.Tensor] = {}
    for func in reward_funcs:
        name = getattr(func, "__name__", repr(func))
        if name in parts:
            raise RewardError(f"two reward functions are named {name}; give them distinct __name__s")
        try:
            values = func(prompts=prompts, completions=completions, **columns)
        except Exception as err:  # noqa: BLE001 - reported with the function's name, the cause chained
            message = (str(err).strip().splitlines() or [""])[0]
            raise RewardError(f"reward function {name} raised {type(err).__name__}: {message}") from err
        parts[name] = check_rewards(name, values, n)
    if parts:
        unscored = torch.stack(list(parts.values())).isnan().all(0).nonzero().flatten().tolist()  # rows
        if unscored:
            raise RewardError(f"no reward function applies to rows {unscored[:10]}: every function "
                              f"({', '.join(parts)}) returned None there")  # fmt: skip
    total = torch.zeros(n, dtype=torch.float32)
    for w, part in zip(weights, parts.values()):
        total = total + torch.where(part.isnan(), torch.zeros_like(part), w * part)  # nansum over functions
    return total, parts


def roll_out(
    model, tokenizer, thinking: ThinkingConfig, examples, *, num_generations: int, max_completion_length: int,
    temperature: float, top_p: float, exploration: Exploration, seeds: torch.Tensor, generator: torch.Generator,
    engine: dict | None = None,
) -> tuple[Generation, list[str]]:  # fmt: skip
    """Generate ``num_generations`` rollouts of each example in the checkpoint's thinking mode;
    returns the generation and decoded texts. ``engine``: ``EngineArgs.engine()``'s decoding settings."""
    prompts = [encode_prompt(tokenizer, ex.question, thinking) for ex in examples]
    gen = thinking_mode(thinking.thinking_mode).generate(
        model, prompts, thinking, exploration=exploration, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, num_generations=num_generations, max_new_tokens=max_completion_length,
        temperature=temperature, top_p=top_p, seeds=seeds, generator=generator, **(engine or {}),
    )  # fmt: skip
    return gen, gen.decode(tokenizer)


def replaying_mode(record):
    """The mode that recomputes ``record``'s log-probs: soft thinking when it recorded soft steps, else
    the latent forward (discrete, no-CoT and Coconut alike)."""
    return thinking_mode("soft" if getattr(record, "soft", None) is not None else "coconut")


def completion_logps(model, r: Rollout, exploration: Exploration, temperature: float = 1.0,
                     head: PolicyHead = FULL_POLICY, forward=None) -> LogProbs:  # fmt: skip
    """Log-probs of the completion positions given the prompt and the thinking replayed from the record
    (latent trajectory under the recorded noise, or the soft steps' recorded inputs), under ``head``'s
    policy (the full one, or an internal layer's: BuPO); gradients flow through the latent trajectory,
    not through the soft mixtures. ``forward``: what runs the model's calls (``compiled_step``; None: ``model``)."""
    return replaying_mode(r).completion_logps(model, r, exploration, temperature, head, forward)
