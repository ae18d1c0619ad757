"""Group-relative advantages and the clipped GRPO policy loss, with TRL's formulas and names.

The objective (DESIGN §2.5) is TRL's ``GRPOTrainer`` loss, written as short pure functions so
it can be tested without a trainer:

    A_i      = r_i - mean_group(r)                 [/ (std + eps) when scale_rewards != "none"]
    w_t      = exp(log pi(y_t) - log pi_old(y_t))  (token level), or
    w        = exp(mean_t (log pi - log pi_old))   (sequence level, GSPO, arXiv:2507.18071)
    loss_t   = -min(w_t A, clip(w_t, 1 - eps_low, 1 + eps_high) A) + beta * k3_t
    k3_t     = exp(ref_t - logp_t) - (ref_t - logp_t) - 1   (Schulman's k3 estimator of KL)

then reduced over the active tokens as ``loss_type`` says (grpo, bnpo, dr_grpo, dapo).

Shape legend:
    B   rollouts in the batch, grouped: rows i*G .. i*G+G-1 belong to prompt i
    G   generations (rollouts) per prompt, ``num_generations``
    T   completion positions (padded); ``completion_mask`` marks the active ones
    S   1 at sequence level or T at token level (the ratio's last dimension)

Positions outside the mask never reach the loss or the metrics: their log-ratio and KL are set
to 0 before use, so padding may hold any value (even NaN or -inf) without poisoning gradients.
"""

from __future__ import annotations

from typing import Literal

import torch

ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ImportanceSamplingLevel = Literal["token", "sequence"]

SCALE_REWARDS: tuple[str, ...] = ("group", "batch", "none")
LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = ("token", "sequence")


# --------------------------------------------------------------------------- advantages


def _check_finite(rewards: torch.Tensor) -> None:
    """Raise ValueError naming the rows whose reward is NaN or infinite."""
    bad = ~torch.isfinite(rewards)  # [B]
    if bool(bad.any()):
        nan_rows = torch.nonzero(torch.isnan(rewards)).flatten().tolist()
        inf_rows = torch.nonzero(torch.isinf(rewards)).flatten().tolist()
        raise ValueError(f"rewards must be finite: NaN at rows {nan_rows}, inf at rows {inf_rows}")


def group_advantages(
    rewards: torch.Tensor,
    num_generations: int,
    scale_rewards: ScaleRewards = "none",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Group-relative advantages, TRL's ``scale_rewards`` convention.

        A_i = r_i - mean_{j in group(i)} r_j
        "group": A_i / (std_{group(i)}(r) + eps)      "batch": A_i / (std_batch(r) + eps)
        "none":  A_i  (mean-only; Dropout-GRPO, DESIGN §2.2 — the std division biases the estimator)

    std is the unbiased (Bessel-corrected) ``torch.std``, as in TRL; a group of one rollout
    (or a batch of one) has std 0. A group whose rewards are all equal gets all-zero advantages.

    Args:
        rewards: [B] scalar reward per rollout, rows grouped by prompt.
        num_generations: G, rollouts per prompt; B must be a multiple of G.
        scale_rewards: "group", "batch" or "none".
        eps: added to the std before dividing.

    Returns:
        [B] advantages, in rewards' floating dtype.

    Raises:
        ValueError: rewards not 1-D, B % G != 0, unknown ``scale_rewards``, or a non-finite reward.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B], got shape {tuple(rewards.shape)}")
    if num_generations < 1 or rewards.numel() % num_generations != 0:
        raise ValueError(
            f"batch of {rewards.numel()} rewards is not a whole number of groups of "
            f"num_generations={num_generations}"
        )
    _check_finite(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())

    grouped = rewards.view(-1, num_generations)  # [B/G, G]
    advantage = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()  # [B]
    if scale_rewards == "none":
        return advantage
    if scale_rewards == "group":
        std = _std(grouped, dim=1).repeat_interleave(num_generations)  # [B]
    else:
        std = _std(rewards, dim=0).expand_as(rewards)  # [B]
    return advantage / (std + eps)  # [B]


def _std(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Unbiased std along ``dim``; 0 (not NaN) when that dimension has a single element."""
    if x.shape[dim] < 2:
        return torch.zeros_like(x.select(dim, 0))
    return x.std(dim=dim)


# --------------------------------------------------------------------------- loss pieces


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum_{m=1} x / max(#{m=1}, 1), over ``dim`` (all elements when None).

    Args:
        x: [B, T] values (a [B, 1] tensor is broadcast over T); values outside the mask are
            ignored, even NaN.
        mask: [B, T] 0/1 (bool, int or float).

    Returns:
        A scalar when ``dim`` is None, else x reduced over ``dim``; 0 where the mask is empty.
    """
    active = mask.bool()  # [B, T]
    x = torch.where(active, x, torch.zeros_like(x))  # [B, T]
    count = active.sum(dim) if dim is not None else active.sum()
    total = x.sum(dim) if dim is not None else x.sum()
    return total / count.clamp(min=1).to(x.dtype)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - logp) - (ref - logp) - 1 >= 0.

    Args:
        logps: [B, T] log pi(y_t) under the current policy.
        ref_logps: [B, T] log pi_ref(y_t).
        mask: optional [B, T]; positions outside it get 0.

    Returns:
        [B, T] per-token KL estimates.
    """
    delta = ref_logps - logps  # [B, T]
    if mask is not None:
        delta = torch.where(mask.bool(), delta, torch.zeros_like(delta))  # [B, T]
    return torch.exp(delta) - delta - 1.0  # [B, T]


def importance_weights(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    mask: torch.Tensor,
    level: ImportanceSamplingLevel = "token",
) -> torch.Tensor:
    """Importance ratio w = pi / pi_old, per token or per sequence (GSPO).

        token:    w_t = exp(logp_t - oldp_t)                                   -> [B, T]
        sequence: w   = exp(sum_t m_t (logp_t - oldp_t) / max(sum_t m_t, 1))   -> [B, 1]

    Args:
        logps: [B, T] log-probs under the policy being optimised (carries the gradient).
        old_logps: [B, T] log-probs under the policy that sampled the rollouts.
        mask: [B, T] active positions; elsewhere the log-ratio is taken as 0 (w = 1).
        level: "token" or "sequence".

    Returns:
        [B, S] ratios (S = T at token level, 1 at sequence level).
    """
    if level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {level!r}")
    log_ratio = logps - old_logps  # [B, T]
    log_ratio = torch.where(mask.bool(), log_ratio, torch.zeros_like(log_ratio))  # [B, T]
    if level == "sequence":
        log_ratio = masked_mean(log_ratio, mask, dim=-1).unsqueeze(-1)  # [B, 1]
    return torch.exp(log_ratio)  # [B, S]


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float, epsilon_high: float
) -> torch.Tensor:
    """PPO's pessimistic clipped objective, negated: -min(w A, clip(w, 1-eps_low, 1+eps_high) A).

    Args:
        ratio: [B, S] importance ratios w.
        advantages: [B] one advantage per rollout.

    Returns:
        [B, S] per-token (or per-sequence) loss.
    """
    advantage = advantages.unsqueeze(1)  # [B, 1]
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)  # [B, S]
    return -torch.minimum(ratio * advantage, clipped * advantage)  # [B, S]


def reduce_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: LossType,
    max_completion_length: int | None = None,
    num_items_in_batch: int | float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce the [B, T] per-token loss to a scalar the way TRL's ``loss_type`` does.

        grpo:    mean_b [ sum_t m l / max(sum_t m, 1) ]           (mean per sequence, then over sequences)
        bnpo:    sum m l / max(sum m, 1)                           (mean over active tokens of this batch)
        dr_grpo: sum m l / (B * max_completion_length)             (Dr. GRPO, arXiv:2503.20783)
        dapo:    sum m l / max(num_items_in_batch, 1)              (DAPO, arXiv:2503.14476)

    For dapo, ``num_items_in_batch`` is the number of active tokens of the whole generation batch
    (every micro-batch of the gradient-accumulation step), so that summing the micro-batch losses
    gives the loss of the whole batch; it defaults to this batch's ``mask.sum()``. Under DDP, which
    averages gradients over processes, pass the global count divided by the number of processes
    (as TRL does).

    Raises:
        ValueError: unknown ``loss_type``, or dr_grpo without ``max_completion_length``.
    """
    if loss_type == "grpo":
        return masked_mean(per_token_loss, mask, dim=-1).mean()
    if loss_type == "bnpo":
        return masked_mean(per_token_loss, mask)
    active = mask.bool()  # [B, T]
    total = torch.where(active, per_token_loss, torch.zeros_like(per_token_loss)).sum()
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        return total / (per_token_loss.shape[0] * max_completion_length)
    if loss_type == "dapo":
        items = active.sum() if num_items_in_batch is None else num_items_in_batch
        items = torch.as_tensor(items, dtype=total.dtype, device=total.device)
        return total / items.clamp(min=1.0)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


# --------------------------------------------------------------------------- the loss


def _check_inputs(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    ref_logps: torch.Tensor | None,
    beta: float,
    loss_type: str,
    max_completion_length: int | None,
) -> None:
    """Raise ValueError on mismatched shapes or settings that cannot work together."""
    if logps.dim() != 2:
        raise ValueError(f"logps must be [B, T], got shape {tuple(logps.shape)}")
    named = {"old_logps": old_logps, "completion_mask": completion_mask, "ref_logps": ref_logps}
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != logps.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, logps has {tuple(logps.shape)}")
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must be [B]={logps.shape[0]}, got shape {tuple(advantages.shape)}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError(f"beta={beta} needs ref_logps")
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length")


@torch.no_grad()
def _clip_metrics(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
) -> dict[str, float]:
    """Fractions of active tokens whose ratio sits in a clipped region, and the mean ratio.

    low: w < 1 - eps_low with A < 0; high: w > 1 + eps_high with A > 0 (TRL's definitions).
    At sequence level each sequence's ratio counts once per active token of it.
    """
    advantage = advantages.unsqueeze(1)  # [B, 1]
    is_low = ((ratio < 1.0 - epsilon_low) & (advantage < 0)).to(ratio.dtype)  # [B, S]
    is_high = ((ratio > 1.0 + epsilon_high) & (advantage > 0)).to(ratio.dtype)  # [B, S]
    return {
        "clip_ratio/low_mean": masked_mean(is_low, mask).item(),
        "clip_ratio/high_mean": masked_mean(is_high, mask).item(),
        "clip_ratio/region_mean": masked_mean(is_low + is_high, mask).item(),
        "ratio/mean": masked_mean(ratio, mask).item(),
    }


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: LossType = "dapo",
    importance_sampling_level: ImportanceSamplingLevel = "token",
    max_completion_length: int | None = None,
    num_items_in_batch: int | float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """TRL's GRPO loss: clipped surrogate plus optional k3 KL, reduced by ``loss_type``.

        w      = importance_weights(logps, old_logps)           [B, T] or [B, 1] (GSPO)
        loss_t = -min(w A, clip(w, 1 - epsilon, 1 + epsilon_high) A) + beta * k3_t
        loss   = reduce_loss(loss_t, completion_mask, loss_type)

    Args:
        logps: [B, T] log pi_theta(y_t | ...) with gradient. For latent rollouts these are the
            answer-token log-probs recomputed under the rollout's recorded noise (DESIGN §2.2).
        old_logps: [B, T] log-probs of the sampling policy (no gradient); None means on-policy
            (``logps.detach()``), so w = 1 in value but not in gradient.
        advantages: [B] one advantage per rollout (``group_advantages``).
        completion_mask: [B, T] 1 on positions that count (bool, int or float).
        ref_logps: [B, T] reference-policy log-probs; required when beta != 0.
        beta: weight of the k3 KL penalty.
        epsilon: lower clip range eps_low (and the upper one when ``epsilon_high`` is None).
        epsilon_high: upper clip range (DAPO's clip-higher, e.g. 0.28).
        loss_type: "grpo", "bnpo", "dr_grpo" or "dapo" (see ``reduce_loss``).
        importance_sampling_level: "token" or "sequence".
        max_completion_length: the generation length cap; required for dr_grpo.
        num_items_in_batch: dapo's normaliser, the active-token count of the whole generation
            batch (defaults to ``completion_mask.sum()``).

    Returns:
        (loss, metrics): the scalar loss and python floats with TRL's names — "kl" (masked mean
        of k3; present when beta != 0 or ref_logps is given), "clip_ratio/low_mean",
        "clip_ratio/high_mean", "clip_ratio/region_mean" (fractions of active tokens) and
        "ratio/mean" (mean w over active tokens).

    Raises:
        ValueError: shape mismatch, unknown loss_type / importance_sampling_level, beta != 0
            without ref_logps, dr_grpo without max_completion_length.
    """
    _check_inputs(
        logps, old_logps, advantages, completion_mask, ref_logps, beta, loss_type, max_completion_length
    )
    if old_logps is None:
        old_logps = logps.detach()
    epsilon_low = epsilon
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    advantages = advantages.to(logps.dtype)

    ratio = importance_weights(logps, old_logps, completion_mask, importance_sampling_level)  # [B, S]
    per_token_loss = clipped_surrogate(ratio, advantages, epsilon_low, epsilon_high)  # [B, S]
    per_token_loss = per_token_loss.expand_as(logps)  # [B, T]
    metrics: dict[str, float] = {}
    if ref_logps is not None:
        kl = k3_kl(logps, ref_logps, completion_mask)  # [B, T]
        if beta != 0.0:
            per_token_loss = per_token_loss + beta * kl  # [B, T]
        metrics["kl"] = masked_mean(kl.detach(), completion_mask).item()

    loss = reduce_loss(per_token_loss, completion_mask, loss_type, max_completion_length, num_items_in_batch)
    metrics.update(_clip_metrics(ratio.detach(), advantages, completion_mask, epsilon_low, epsilon_high))
    return loss, metrics
