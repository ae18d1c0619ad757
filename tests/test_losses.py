"""GRPO advantages and policy loss: hand-worked numbers, a naive loop re-implementation of TRL's
formulas, the on-policy gradient, and gradient-accumulation invariance."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from latentrl.losses import group_advantages, importance_weights, k3_kl, masked_mean, policy_loss, reduce_loss

LN = math.log


# --------------------------------------------------------------------------- naive reference
# Plain python over rows and tokens, written from TRL's GRPOTrainer formulas; shares no code
# (and no vectorised shortcut) with latentrl.losses.


def naive_advantages(rewards: list[float], g: int, scale: str, eps: float = 1e-4) -> list[float]:
    def mean(xs):
        return sum(xs) / len(xs)

    def unbiased_std(xs):
        if len(xs) < 2:
            return 0.0
        m = mean(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))

    out = []
    batch_std = unbiased_std(rewards)
    for start in range(0, len(rewards), g):
        group = rewards[start : start + g]
        for r in group:
            a = r - mean(group)
            if scale == "group":
                a = a / (unbiased_std(group) + eps)
            elif scale == "batch":
                a = a / (batch_std + eps)
            out.append(a)
    return out


def naive_policy_loss(logps, old, adv, mask, ref, beta, eps_low, eps_high, loss_type, level, max_len, n_items):
    """Returns (loss, metrics) from python lists."""
    n_rows, n_cols = len(logps), len(logps[0])
    loss_rows, active_rows = [], []  # per row: list of per-token losses on active tokens
    kl_sum, ratio_sum, low, high, active_total = 0.0, 0.0, 0, 0, 0
    for b in range(n_rows):
        seq_log_ratio = 0.0
        if level == "sequence":
            n_b = sum(1 for t in range(n_cols) if mask[b][t])
            total = sum(logps[b][t] - old[b][t] for t in range(n_cols) if mask[b][t])
            seq_log_ratio = total / max(n_b, 1)
        row_losses = []
        for t in range(n_cols):
            if not mask[b][t]:
                continue
            log_w = logps[b][t] - old[b][t] if level == "token" else seq_log_ratio
            w = math.exp(log_w)
            w_clip = min(max(w, 1 - eps_low), 1 + eps_high)
            loss_t = -min(w * adv[b], w_clip * adv[b])
            if ref is not None:
                d = ref[b][t] - logps[b][t]
                kl_t = math.exp(d) - d - 1
                kl_sum += kl_t
                loss_t += beta * kl_t
            row_losses.append(loss_t)
            ratio_sum += w
            low += int(w < 1 - eps_low and adv[b] < 0)
            high += int(w > 1 + eps_high and adv[b] > 0)
            active_total += 1
        loss_rows.append(row_losses)
    total_loss = sum(sum(r) for r in loss_rows)
    if loss_type == "grpo":
        loss = sum(sum(r) / max(len(r), 1) for r in loss_rows) / n_rows
    elif loss_type == "bnpo":
        loss = total_loss / max(active_total, 1)
    elif loss_type == "dr_grpo":
        loss = total_loss / (n_rows * max_len)
    else:
        loss = total_loss / max(n_items if n_items is not None else active_total, 1)
    denom = max(active_total, 1)
    metrics = {
        "clip_ratio/low_mean": low / denom,
        "clip_ratio/high_mean": high / denom,
        "clip_ratio/region_mean": (low + high) / denom,
        "ratio/mean": ratio_sum / denom,
    }
    if ref is not None:
        metrics["kl"] = kl_sum / denom
    return loss, metrics


def random_batch(seed: int, n_rows: int = 8, n_cols: int = 7):
    """float64 log-probs near the old ones (so some ratios clip), ragged masks with an all-masked row,
    a full row and holes; padding holds large junk values that must not matter."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(n_rows, n_cols, generator=gen, dtype=torch.float64) * 3  # [B, T]
    logps = old + 0.3 * torch.randn(n_rows, n_cols, generator=gen, dtype=torch.float64)  # [B, T]
    ref = old + 0.2 * torch.randn(n_rows, n_cols, generator=gen, dtype=torch.float64)  # [B, T]
    lengths = torch.randint(1, n_cols + 1, (n_rows,), generator=gen)
    lengths[1], lengths[2] = 0, n_cols
    mask = torch.arange(n_cols).unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
    mask[3, 0] = False  # a hole inside a sequence
    junk = ~mask
    logps, old, ref = (x.masked_fill(junk, 50.0) for x in (logps, old, ref))
    adv = torch.randn(n_rows, generator=gen, dtype=torch.float64)  # [B]
    adv[4] = 0.0
    return logps, old, ref, mask, adv


# --------------------------------------------------------------------------- advantages


def test_group_advantages_hand_worked():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    none = group_advantages(rewards, 4, "none")
    torch.testing.assert_close(none, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0], dtype=torch.float64))
    group_std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]
    group = group_advantages(rewards, 4, "group")
    expected = [0.5 / (group_std + 1e-4), -0.5 / (group_std + 1e-4)]
    torch.testing.assert_close(group[:2], torch.tensor(expected, dtype=torch.float64))
    batch_std = math.sqrt(1.5 / 7)  # mean 0.75, squared deviations 6 * 1/16 + 2 * 9/16
    batch = group_advantages(rewards, 4, "batch")
    torch.testing.assert_close(batch[0], torch.tensor(0.5 / (batch_std + 1e-4), dtype=torch.float64))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_naive(scale):
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = group_advantages(rewards, 4, scale).tolist()
    assert got == pytest.approx(naive_advantages(rewards.tolist(), 4, scale), abs=1e-12)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_std_group_gives_zero_advantages(scale):
    rewards = torch.tensor([0.3, 0.3, 0.3, 1.0, 0.0, 2.0])
    adv = group_advantages(rewards, 3, scale)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert adv[3:].abs().sum() > 0


def test_group_scaling_gives_unit_std_groups():
    rewards = torch.randn(20, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 5 + 3
    exact = group_advantages(rewards, 5, "group", eps=0.0).view(4, 5)
    torch.testing.assert_close(exact.std(dim=1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(exact.mean(dim=1), torch.zeros(4, dtype=torch.float64))
    default_eps = group_advantages(rewards, 5, "group").view(4, 5)
    torch.testing.assert_close(default_eps.std(dim=1), torch.ones(4, dtype=torch.float64), atol=1e-3, rtol=0)


def test_single_generation_has_zero_advantage_not_nan():
    for scale in ("group", "batch", "none"):
        assert torch.equal(group_advantages(torch.tensor([2.0, 5.0]), 1, scale), torch.zeros(2))
    assert torch.equal(group_advantages(torch.tensor([2.0]), 1, "batch"), torch.zeros(1))


def test_integer_rewards_become_float():
    adv = group_advantages(torch.tensor([1, 0]), 2)
    assert adv.is_floating_point()
    assert adv.tolist() == [0.5, -0.5]


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="num_generations=4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(torch.zeros(4), 2, "std")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"NaN at rows \[1, 3\], inf at rows \[2\]"):
        group_advantages(torch.tensor([0.0, math.nan, math.inf, math.nan]), 2)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 2), 2)


# --------------------------------------------------------------------------- policy loss: hand-worked

# Row 0: A = +1, both tokens active, w = (1.5, 1.0). Row 1: A = -1, one active token, w = 0.5.
# eps = 0.2: token losses -min(1.5, 1.2) = -1.2, -1.0, and -min(-0.5, -0.8) = +0.8; sum -1.4 over 3 tokens.
HAND_LOGPS = torch.tensor([[LN(1.5), 0.0], [LN(0.5), 0.0]], dtype=torch.float64)
HAND_OLD = torch.zeros(2, 2, dtype=torch.float64)
HAND_ADV = torch.tensor([1.0, -1.0], dtype=torch.float64)
HAND_MASK = torch.tensor([[1, 1], [1, 0]])


@pytest.mark.parametrize(
    ("loss_type", "kwargs", "expected"),
    [
        ("grpo", {}, ((-1.2 - 1.0) / 2 + 0.8) / 2),  # -0.15
        ("bnpo", {}, -1.4 / 3),
        ("dr_grpo", {"max_completion_length": 4}, -1.4 / (2 * 4)),  # -0.175
        ("dapo", {}, -1.4 / 3),
        ("dapo", {"num_items_in_batch": 7}, -1.4 / 7),  # -0.2
    ],
)
def test_policy_loss_hand_worked(loss_type, kwargs, expected):
    loss, metrics = policy_loss(HAND_LOGPS, HAND_OLD, HAND_ADV, HAND_MASK, loss_type=loss_type, **kwargs)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics == pytest.approx(
        {
            "clip_ratio/low_mean": 1 / 3,
            "clip_ratio/high_mean": 1 / 3,
            "clip_ratio/region_mean": 2 / 3,
            "ratio/mean": 1.0,
        }
    )
    assert "kl" not in metrics


def test_policy_loss_hand_worked_sequence_level_and_clip_higher():
    # Row 0's sequence ratio is exp(mean(ln 1.5, 0)) = sqrt(1.5) = 1.2247: clipped at 1.2, not at 1.28.
    args = (HAND_LOGPS, HAND_OLD, HAND_ADV, HAND_MASK)
    loss, metrics = policy_loss(*args, loss_type="grpo", importance_sampling_level="sequence")
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2, abs=1e-12)
    assert metrics["clip_ratio/high_mean"] == pytest.approx(2 / 3)  # both active tokens of row 0
    loss, metrics = policy_loss(*args, loss_type="grpo", importance_sampling_level="sequence", epsilon_high=0.28)
    assert loss.item() == pytest.approx((-math.sqrt(1.5) + 0.8) / 2, abs=1e-12)
    assert metrics["clip_ratio/high_mean"] == 0.0


def test_zero_advantage_is_never_counted_as_clipped():
    # w = 0.5 and w = 2.0 lie outside [0.8, 1.2], but with A = 0 there is no gradient to clip.
    logps = torch.tensor([[LN(0.5), LN(2.0)]], dtype=torch.float64)
    old, adv = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    loss, metrics = policy_loss(logps, old, adv, torch.ones(1, 2))
    assert loss.item() == 0.0
    assert metrics["clip_ratio/region_mean"] == 0.0 and metrics["ratio/mean"] == pytest.approx(1.25)


def test_k3_kl_hand_worked():
    # ref - logp = ln 2 -> 2 - ln 2 - 1; ref - logp = 0 -> 0.
    logps = torch.tensor([[0.0, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[LN(2.0), -1.0]], dtype=torch.float64)
    torch.testing.assert_close(k3_kl(logps, ref), torch.tensor([[1 - LN(2.0), 0.0]], dtype=torch.float64))
    adv = torch.zeros(1, dtype=torch.float64)
    loss, metrics = policy_loss(logps, None, adv, torch.ones(1, 2), ref_logps=ref, beta=0.04, loss_type="bnpo")
    assert metrics["kl"] == pytest.approx((1 - LN(2.0)) / 2)
    assert loss.item() == pytest.approx(0.04 * (1 - LN(2.0)) / 2)


# --------------------------------------------------------------------------- policy loss: against the naive loops


@pytest.mark.parametrize(
    ("loss_type", "scale", "level", "beta", "eps_high"),
    list(
        itertools.product(
            ["grpo", "bnpo", "dr_grpo", "dapo"],
            ["group", "batch", "none"],
            ["token", "sequence"],
            [0.0, 0.04],
            [None, 0.28],
        )
    ),
)
def test_policy_loss_matches_naive(loss_type, scale, level, beta, eps_high):
    logps, old, ref, mask, _ = random_batch(seed=7)
    rewards = torch.randn(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rewards[4:6] = 1.0  # one zero-std group
    adv = group_advantages(rewards, 2, scale)
    ref_arg = ref if beta else None
    kwargs = {"max_completion_length": 9} if loss_type == "dr_grpo" else {}
    if loss_type == "dapo":
        kwargs["num_items_in_batch"] = 61
    loss, metrics = policy_loss(
        logps, old, adv, mask, ref_logps=ref_arg, beta=beta, epsilon=0.2, epsilon_high=eps_high,
        loss_type=loss_type, importance_sampling_level=level, **kwargs,
    )
    want_loss, want_metrics = naive_policy_loss(
        logps.tolist(), old.tolist(), naive_advantages(rewards.tolist(), 2, scale), mask.tolist(),
        ref.tolist() if beta else None, beta, 0.2, 0.2 if eps_high is None else eps_high, loss_type, level, 9, 61,
    )
    assert loss.item() == pytest.approx(want_loss, abs=1e-6, rel=1e-6)
    assert metrics.keys() == want_metrics.keys()
    for key, value in want_metrics.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


def test_random_batch_exercises_clipping():
    """Guards the equivalence test above against a batch where nothing clips."""
    logps, old, _, mask, adv = random_batch(seed=7)
    _, metrics = policy_loss(logps, old, adv, mask)
    assert 0 < metrics["clip_ratio/low_mean"] < 1 and 0 < metrics["clip_ratio/high_mean"] < 1


def test_dapo_defaults_to_this_batch_token_count():
    logps, old, _, mask, adv = random_batch(seed=2)
    default, _ = policy_loss(logps, old, adv, mask, loss_type="dapo")
    explicit, _ = policy_loss(logps, old, adv, mask, loss_type="dapo", num_items_in_batch=int(mask.sum()))
    bnpo, _ = policy_loss(logps, old, adv, mask, loss_type="bnpo")
    torch.testing.assert_close(default, explicit)
    torch.testing.assert_close(default, bnpo)


def test_padding_values_never_matter():
    logps, old, ref, mask, adv = random_batch(seed=4)
    pad = ~mask
    nan_logps = logps.masked_fill(pad, math.nan).requires_grad_(True)
    inf_old, inf_ref = old.masked_fill(pad, -math.inf), ref.masked_fill(pad, math.inf)
    for level in ("token", "sequence"):
        kwargs = {"beta": 0.04, "importance_sampling_level": level}
        clean, clean_metrics = policy_loss(logps, old, adv, mask, ref_logps=ref, **kwargs)
        dirty, dirty_metrics = policy_loss(nan_logps, inf_old, adv, mask, ref_logps=inf_ref, **kwargs)
        torch.testing.assert_close(dirty, clean)
        assert dirty_metrics == pytest.approx(clean_metrics)
        (grad,) = torch.autograd.grad(dirty, nan_logps)
        assert torch.isfinite(grad).all() and torch.equal(grad[pad], torch.zeros_like(grad[pad]))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_all_masked_batch_gives_zero_loss(loss_type):
    zeros = torch.zeros(2, 3, requires_grad=True)
    loss, metrics = policy_loss(
        zeros, zeros.detach(), torch.ones(2), torch.zeros(2, 3), ref_logps=zeros.detach(), beta=0.1,
        loss_type=loss_type, max_completion_length=3,
    )
    assert loss.item() == 0.0 and all(math.isfinite(v) for v in metrics.values())
    loss.backward()
    assert torch.equal(zeros.grad, torch.zeros(2, 3))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_on_policy_gradient_is_minus_advantage_times_grad_logp(level, beta):
    """At old == new (ratio 1, nothing clipped) and ref == new (k3 gradient 0), dapo's gradient wrt
    logp_{b,t} is -A_b m_{b,t} / N."""
    logps, _, _, mask, adv = random_batch(seed=5)
    logps = logps.clone().requires_grad_(True)
    loss, metrics = policy_loss(
        logps, logps.detach(), adv, mask, ref_logps=logps.detach(), beta=beta,
        loss_type="dapo", importance_sampling_level=level, num_items_in_batch=40,
    )
    assert metrics["clip_ratio/region_mean"] == 0.0 and metrics["ratio/mean"] == pytest.approx(1.0)
    (grad,) = torch.autograd.grad(loss, logps)
    torch.testing.assert_close(grad, -adv.unsqueeze(1) * mask / 40)


def test_on_policy_gradient_through_a_policy():
    """Through a tiny softmax policy: grad_theta loss = -(1/N) sum_{b,t} m A_b grad_theta log pi(y_bt)."""
    gen = torch.Generator().manual_seed(6)
    theta = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True)  # logits over a 5-token vocab
    tokens = torch.randint(0, 5, (4, 3), generator=gen)  # [B, T]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    adv = torch.tensor([1.0, -0.5, 2.0, 3.0], dtype=torch.float64)
    logps = torch.log_softmax(theta, dim=0)[tokens]  # [B, T]
    loss, _ = policy_loss(logps, None, adv, mask, loss_type="dapo")
    (grad,) = torch.autograd.grad(loss, theta)
    expected = torch.zeros(5, dtype=torch.float64)
    n_active = int(mask.sum())
    for b in range(4):
        for t in range(3):
            if mask[b, t]:
                one_hot = torch.zeros(5, dtype=torch.float64)
                one_hot[tokens[b, t]] = 1.0
                grad_logp = one_hot - torch.softmax(theta.detach(), dim=0)  # d log softmax_y / d theta
                expected -= adv[b] * grad_logp / n_active
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_dapo_is_invariant_to_gradient_accumulation(level):
    """Two half-batches normalised by the full batch's token count sum to the full-batch loss and gradient."""
    logps, old, ref, mask, adv = random_batch(seed=8)
    n_items = int(mask.sum())
    whole_in = logps.clone().requires_grad_(True)
    whole, _ = policy_loss(whole_in, old, adv, mask, ref_logps=ref, beta=0.04, importance_sampling_level=level)
    whole.backward()
    split_in = logps.clone().requires_grad_(True)
    total = torch.zeros((), dtype=torch.float64)
    for rows in (slice(0, 3), slice(3, 8)):  # unequal halves
        part, _ = policy_loss(
            split_in[rows], old[rows], adv[rows], mask[rows], ref_logps=ref[rows], beta=0.04,
            importance_sampling_level=level, num_items_in_batch=n_items,
        )
        part.backward()
        total = total + part.detach()
    torch.testing.assert_close(total, whole.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(split_in.grad, whole_in.grad, rtol=0, atol=1e-12)


def test_bnpo_is_not_accumulation_invariant():
    """Why dapo exists: bnpo's per-micro-batch normaliser breaks the sum (the test above can fail)."""
    logps, old, _, mask, adv = random_batch(seed=8)
    whole, _ = policy_loss(logps, old, adv, mask, loss_type="bnpo")
    halves = (slice(0, 3), slice(3, 8))
    parts = sum(policy_loss(logps[r], old[r], adv[r], mask[r], loss_type="bnpo")[0] for r in halves)
    assert abs(parts.item() - whole.item()) > 1e-3


# --------------------------------------------------------------------------- helpers and errors


def test_helpers():
    x = torch.tensor([[1.0, 2.0, math.nan], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, mask).item() == 1.5
    torch.testing.assert_close(masked_mean(x, mask, dim=-1), torch.tensor([1.5, 0.0]))
    w = importance_weights(torch.tensor([[LN(2.0), 0.0]]), torch.zeros(1, 2), torch.ones(1, 2), "sequence")
    torch.testing.assert_close(w, torch.tensor([[math.sqrt(2.0)]]))
    assert reduce_loss(torch.ones(2, 3), torch.zeros(2, 3), "dapo", num_items_in_batch=0).item() == 0.0


def test_policy_loss_errors():
    logps, old, mask, adv = HAND_LOGPS, HAND_OLD, HAND_MASK, HAND_ADV
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss(logps, old, adv, mask, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        policy_loss(logps, old, adv, mask, loss_type="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="importance_sampling_level"):
        policy_loss(logps, old, adv, mask, importance_sampling_level="chunk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ref_logps"):
        policy_loss(logps, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="old_logps"):
        policy_loss(logps, old[:, :1], adv, mask)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logps, old, adv[:1], mask)
