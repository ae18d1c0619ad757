"""The math of evaluation, as pure functions on plain Python values.

- ``pass_at_k``: the unbiased pass@k estimator of Chen et al. 2021 ("Evaluating Large Language
  Models Trained on Code"), from n samples of which c are correct.
- ``majority_vote`` / ``maj_at_k``: self-consistency accuracy (Wang et al. 2022) of k samples,
  averaged over the disjoint blocks of k among the n samples.
- ``mean_ci`` / ``paired_difference``: a mean over seeds with its Student-t confidence interval,
  and the same for paired differences (method A vs method B on the same seeds).
- ``t_quantile``: the Student-t quantile, computed from the regularized incomplete beta function
  (no scipy).

Legend: n = samples drawn for a problem, c = correct samples among them, k = samples the metric
is about, df = degrees of freedom.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

Match = Callable[[str, str], bool]


class Estimate(NamedTuple):
    """A mean with the bounds of its confidence interval (``nan`` bounds when undefined)."""

    mean: float
    lo: float
    hi: float


# ----------------------------------------------------------------------------------------------
# pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate from n samples with c correct (Chen et al. 2021, eq. 1).

        pass@k = 1 - C(n - c, k) / C(n, k)
               = 1 - prod_{i = n-c+1}^{n} (1 - k / i)      (the stable product form)

    It equals the probability that a k-subset drawn without replacement from the n samples holds
    at least one correct sample.

    Raises:
        ValueError: unless 0 <= c <= n and 1 <= k <= n.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prob_all_wrong = math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
    return 1.0 - prob_all_wrong


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """Mean pass@k over problems; ``correct[p][j]`` says whether sample j of problem p is right.

    Problems may have different numbers of samples, each at least k.
    """
    if not correct:
        raise ValueError("mean_pass_at_k needs at least one problem")
    return statistics.fmean(pass_at_k(len(s), sum(map(bool, s)), k) for s in correct)


# ----------------------------------------------------------------------------------------------
# Majority vote


def majority_vote(predictions: Sequence[str | None]) -> str | None:
    """The most frequent non-None prediction; ties go to the one that occurs first.

    Predictions are compared as given (normalize them first). ``None`` (no extractable answer)
    never wins; the result is ``None`` only when every prediction is ``None`` or there are none.
    """
    counts = Counter(p for p in predictions if p is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(p for p in predictions if p is not None and counts[p] == top)


def maj_at_k(
    predictions: Sequence[str | None],
    gold: str,
    k: int,
    match: Match | None = None,
) -> float:
    """Mean majority-vote correctness over the ``n // k`` disjoint consecutive blocks of k predictions.

        maj@k = (1 / m) * sum_{b=0}^{m-1} [vote(predictions[b*k : (b+1)*k]) matches gold],   m = n // k

    Each block is a uniformly random k-subset of i.i.d. samples, so every term, and hence their
    mean, is an unbiased estimate of maj@k; averaging the blocks lowers its variance and, when k
    divides n, uses every sample, as ``pass_at_k`` does (a remainder of ``n % k`` samples is left
    out). ``maj@1`` is the fraction of correct samples. ``match(prediction, gold)`` decides the
    correctness of a voted answer (default: equality); votes themselves are counted by equality.

    Raises:
        ValueError: unless 1 <= k <= len(predictions).
    """
    if not 1 <= k <= len(predictions):
        raise ValueError(f"need 1 <= k <= {len(predictions)} (number of predictions), got k={k}")
    blocks = [predictions[start : start + k] for start in range(0, len(predictions) - k + 1, k)]
    return statistics.fmean(_vote_is_correct(block, gold, match) for block in blocks)


def _vote_is_correct(predictions: Sequence[str | None], gold: str, match: Match | None) -> float:
    """1.0 if the majority vote of ``predictions`` matches ``gold``, else 0.0 (no vote: 0.0)."""
    vote = majority_vote(predictions)
    if vote is None:
        return 0.0
    is_correct = match(vote, gold) if match is not None else vote == gold
    return 1.0 if is_correct else 0.0


def mean_maj_at_k(
    predictions_per_problem: Sequence[Sequence[str | None]],
    golds: Sequence[str],
    k: int,
    match: Match | None = None,
) -> float:
    """Mean of ``maj_at_k`` over problems (one list of predictions and one gold per problem)."""
    if len(predictions_per_problem) != len(golds):
        raise ValueError(
            f"{len(predictions_per_problem)} prediction lists but {len(golds)} gold answers"
        )
    if not golds:
        raise ValueError("mean_maj_at_k needs at least one problem")
    return statistics.fmean(
        maj_at_k(preds, gold, k, match) for preds, gold in zip(predictions_per_problem, golds)
    )


# ----------------------------------------------------------------------------------------------
# Confidence intervals over seeds


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean with its two-sided Student-t confidence interval (e.g. accuracy over seeds).

        half-width = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n),   s = sample std (ddof=1)

    A single value gives ``(value, nan, nan)``: its spread is unknown.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = statistics.fmean(values)
    if n == 1:
        return Estimate(mean, math.nan, math.nan)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half)


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> Estimate:
    """Mean of ``a_i - b_i`` with its Student-t interval (a and b measured on the same seeds).

    Pairing removes the seed-to-seed variance the two runs share, so the interval is tighter
    than comparing two independent ``mean_ci`` intervals.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)], confidence)


# ----------------------------------------------------------------------------------------------
# Student t distribution


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom.

    For t >= 0: 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t^2), I the regularized incomplete
    beta function; the t < 0 side follows by symmetry.
    """
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (bisection on ``t_cdf``).

    E.g. ``t_quantile(0.975, 2) = 4.303``, ``t_quantile(0.975, 4) = 2.776``.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), by its continued fraction (Numerical Recipes 6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b), evaluated with the modified Lentz method."""
    tiny = 1e-300

    def guard(v: float) -> float:
        return v if abs(v) >= tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 10_000):
        even = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        d = 1.0 / guard(1.0 + even * d)
        c = guard(1.0 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        d = 1.0 / guard(1.0 + odd * d)
        c = guard(1.0 + odd / c)
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h
