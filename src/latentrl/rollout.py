"""K rollouts per prompt into one typed record, and the log-probs of its completions.

Shape legend: ``B`` rollouts (prompts x ``G`` generations, grouped), ``P`` prompt columns,
``T`` completion tokens, ``K`` latent steps, ``D`` hidden size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from latentrl.exploration import Exploration
from latentrl.models import Generation, generate, latent_forward
from latentrl.models.layout import ThinkingConfig, encode_prompt

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

    def select(self, rows: torch.Tensor | slice) -> "Rollout":
        """The sub-record of ``rows`` (a minibatch for the update)."""
        pick = lambda x: None if x is None else x[rows]  # noqa: E731
        completions = [self.completions[i] for i in torch.arange(len(self.completions))[rows].tolist()]
        return Rollout(
            pick(self.prompt_ids), pick(self.prompt_mask), pick(self.latent_mask), pick(self.completion_ids),
            pick(self.completion_mask), pick(self.seeds), pick(self.rewards),
            {k: v[rows] for k, v in self.reward_parts.items()}, pick(self.advantages), completions,
            pick(self.truncated), pick(self.thoughts), pick(self.old_logps), pick(self.ref_logps),
        )  # fmt: skip


def score(
    reward_funcs: Sequence[RewardFunc], weights: Sequence[float], prompts: list[str], completions: list[str],
    columns: dict[str, list],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """Weighted sum of TRL-style reward functions ``f(prompts, completions, **columns) -> list[float]``.

    A reward that is not a finite number raises ``ValueError`` naming the function and the row.
    """
    parts = {}
    for func in reward_funcs:
        name = getattr(func, "__name__", repr(func))
        values = func(prompts=prompts, completions=completions, **columns)
        if len(values) != len(completions):
            raise ValueError(f"reward function {name} returned {len(values)} values for {len(completions)} completions")
        tensor = torch.tensor([float("nan") if v is None else float(v) for v in values], dtype=torch.float32)
        bad = (~torch.isfinite(tensor)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"reward function {name} returned non-finite rewards at rows {bad[:10]}: "
                             f"{[values[i] for i in bad[:10]]}")  # fmt: skip
        parts[name] = tensor
    total = sum(w * parts[n] for w, n in zip(weights, parts))
    return total, parts


def roll_out(
    model, tokenizer, thinking: ThinkingConfig, examples, *, num_generations: int, max_completion_length: int,
    temperature: float, top_p: float, exploration: Exploration, seeds: torch.Tensor, generator: torch.Generator,
) -> tuple[Generation, list[str]]:  # fmt: skip
    """Generate ``num_generations`` rollouts of each example; returns the generation and decoded texts."""
    prompts = [encode_prompt(tokenizer, ex.question, thinking) for ex in examples]
    gen = generate(
        model, prompts, latent_token_id=thinking.latent_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, num_generations=num_generations, max_new_tokens=max_completion_length,
        temperature=temperature, top_p=top_p, exploration=exploration, seeds=seeds, generator=generator,
    )  # fmt: skip
    return gen, gen.decode(tokenizer)


@dataclass
class LogProbs:
    logps: torch.Tensor  # [B, T] log pi(token) of each completion token
    entropy: torch.Tensor  # [B, T] entropy of the token distribution


def completion_logps(model, r: Rollout, exploration: Exploration, temperature: float = 1.0) -> LogProbs:
    """Log-probs of the completion tokens given the prompt and the latent trajectory recomputed under
    the rollout's recorded noise (``r.seeds``); gradients flow through the trajectory."""
    ids = torch.cat([r.prompt_ids, r.completion_ids], dim=1)  # [B, P+T]
    mask = torch.cat([r.prompt_mask, r.completion_mask], dim=1)  # [B, P+T]
    latent = torch.cat([r.latent_mask, torch.zeros_like(r.completion_mask, dtype=torch.bool)], dim=1)
    P = r.prompt_ids.shape[1]
    with exploration.session(model, r.seeds):
        logits = latent_forward(model, ids, mask, latent, exploration).logits[:, P - 1 : -1]  # [B, T, V]
    logits = logits.float() / (temperature if temperature > 0 else 1.0)
    logp_all = torch.log_softmax(logits, dim=-1)  # [B, T, V]
    logps = logp_all.gather(-1, r.completion_ids[..., None]).squeeze(-1)  # [B, T]
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # [B, T]
    return LogProbs(logps, entropy)
