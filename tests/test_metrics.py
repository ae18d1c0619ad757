"""Evaluation math: hand-worked values, naive re-computations, enumeration, known t quantiles."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latentrl.eval.metrics import (
    Estimate,
    maj_at_k,
    majority_vote,
    mean_ci,
    mean_maj_at_k,
    mean_pass_at_k,
    paired_difference,
    pass_at_k,
    t_cdf,
    t_quantile,
)

# ---------------------------------------------------------------------------------------------
# pass@k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 0, 3, 0.0),
        (5, 5, 3, 1.0),
        (5, 2, 4, 1.0),  # n - c < k: every 4-subset holds a correct sample
        (10, 1, 10, 1.0),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    ],
)
def test_pass_at_k_hand_worked(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(n=st.integers(1, 60), data=st.data())
def test_pass_at_k_equals_naive_binomial_ratio(n: int, data: st.DataObject) -> None:
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    naive = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(naive, abs=1e-12)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_is_fraction_of_k_subsets_with_a_correct_sample(n: int) -> None:
    for c, k in itertools.product(range(n + 1), range(1, n + 1)):
        samples = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(samples, k))
        fraction = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(fraction, abs=1e-12)


def test_pass_at_k_stable_for_large_n() -> None:
    # C(1000, 500) overflows a float; the product form does not.
    value = pass_at_k(1000, 3, 500)
    assert value == pytest.approx(1 - (500 * 499 * 498) / (1000 * 999 * 998), abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(5, 2, 6), (5, 2, 0), (5, 6, 1), (5, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_over_problems() -> None:
    correct = [[True, False, False, False, True], [False] * 5, [True] * 3]
    expected = (0.4 + 0.0 + 1.0) / 3
    assert mean_pass_at_k(correct, 1) == pytest.approx(expected)
    with pytest.raises(ValueError):
        mean_pass_at_k([], 1)


# ---------------------------------------------------------------------------------------------
# Majority vote and maj@k


def test_majority_vote_most_frequent() -> None:
    assert majority_vote(["3", "4", "4", None, None, None]) == "4"  # None never wins


def test_majority_vote_tie_goes_to_first_occurrence() -> None:
    assert majority_vote(["7", "5", "5", "7"]) == "7"
    assert majority_vote(["5", "7", "7", "5"]) == "5"
    assert majority_vote([None, "b", "a"]) == "b"


def test_majority_vote_all_none_or_empty() -> None:
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_maj_at_k_averages_disjoint_blocks() -> None:
    preds = ["1", "2", "2", "1", "1", "1"]
    # k=3: blocks (1, 2, 2) -> "2" and (1, 1, 1) -> "1"; the first block alone would say 1.0
    assert maj_at_k(preds, "2", k=3) == pytest.approx(0.5)
    assert maj_at_k(preds, "1", k=3) == pytest.approx(0.5)
    assert maj_at_k(preds, "2", k=6) == 0.0  # one block, all 6: "1" wins 4-2
    assert maj_at_k(preds, "1", k=1) == pytest.approx(4 / 6)  # maj@1: the fraction correct, not sample 0
    assert maj_at_k([None, None], "1", k=2) == 0.0


def test_maj_at_k_leaves_out_the_remainder() -> None:
    # n=7, k=3: blocks (2, 2, 1) -> "2", (1, 1, 2) -> "1"; the 7th sample is not used
    preds = ["2", "2", "1", "1", "1", "2", "2"]
    assert maj_at_k(preds, "2", k=3) == pytest.approx(0.5)
    assert maj_at_k(preds[:6], "2", k=3) == maj_at_k(preds, "2", k=3)


def test_maj_at_k_matches_naive_block_loop() -> None:
    preds = ["a", "b", None, "b", "a", "a", "c", "c", "a", None, None, "b"]
    for k in range(1, len(preds) + 1):
        blocks = [preds[i * k : (i + 1) * k] for i in range(len(preds) // k)]
        naive = sum(majority_vote(b) == "a" for b in blocks) / len(blocks)
        assert maj_at_k(preds, "a", k) == pytest.approx(naive, abs=1e-12)


def test_maj_at_k_custom_match() -> None:
    def same_number(pred: str, gold: str) -> bool:
        return float(pred) == float(gold)

    assert maj_at_k(["2.0", "2.0", "3"], "2", k=3) == 0.0
    assert maj_at_k(["2.0", "2.0", "3"], "2", k=3, match=same_number) == 1.0


def test_maj_at_k_rejects_bad_k() -> None:
    with pytest.raises(ValueError):
        maj_at_k(["1"], "1", k=2)
    with pytest.raises(ValueError):
        maj_at_k(["1"], "1", k=0)


def test_mean_maj_at_k() -> None:
    preds = [["1", "1", "2"], ["3", "4", "4"], [None, None, None]]
    assert mean_maj_at_k(preds, ["1", "3", "0"], k=3) == pytest.approx(1 / 3)
    assert mean_maj_at_k(preds, ["1", "3", "0"], k=1) == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    with pytest.raises(ValueError):
        mean_maj_at_k(preds, ["1"], k=1)


def test_maj_at_1_is_pass_at_1_of_all_samples() -> None:
    preds = [["1", "2"], ["3", "3"], ["5", "4"]]
    golds = ["1", "3", "4"]
    correct = [[p == g for p in ps] for ps, g in zip(preds, golds)]
    assert mean_maj_at_k(preds, golds, k=1) == pytest.approx(mean_pass_at_k(correct, 1))


# ---------------------------------------------------------------------------------------------
# Student t and confidence intervals


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [  # standard two-sided tables (3 decimals)
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 3, 3.182),
        (0.975, 4, 2.776),
        (0.975, 9, 2.262),
        (0.975, 30, 2.042),
        (0.95, 5, 2.015),
        (0.995, 3, 5.841),
        (0.9995, 1, 636.619),
    ],
)
def test_t_quantile_matches_tables(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=6e-4)


def test_t_quantile_exact_forms() -> None:
    # df = 1 is Cauchy: tan(pi (p - 1/2)); df = 2: (2p - 1) sqrt(2 / (4 p (1 - p))).
    for p in (0.6, 0.9, 0.975, 0.999):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        a = 4 * p * (1 - p)
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / a), rel=1e-9)


def test_t_quantile_tends_to_normal_and_is_symmetric() -> None:
    z = statistics.NormalDist().inv_cdf(0.975)
    assert t_quantile(0.975, 10**7) == pytest.approx(z, abs=1e-6)
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_quantile(0.5, 3) == pytest.approx(0.0, abs=1e-12)
    assert t_cdf(0.0, 3) == pytest.approx(0.5)
    assert t_cdf(t_quantile(0.9, 7), 7) == pytest.approx(0.9, abs=1e-12)


def test_mean_ci_hand_worked() -> None:
    # values 1, 2, 3: mean 2, s = 1, half-width = t_{0.975,2} / sqrt(3) = 4.303 / 1.732
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half), abs=1e-9)


def test_mean_ci_single_value_and_named_fields() -> None:
    est = mean_ci([0.5])
    assert isinstance(est, Estimate) and est.mean == 0.5
    assert math.isnan(est.lo) and math.isnan(est.hi)
    assert mean_ci([4.0, 4.0, 4.0]) == (4.0, 4.0, 4.0)
    with pytest.raises(ValueError):
        mean_ci([])


def test_mean_ci_confidence_widens_interval() -> None:
    values = [0.31, 0.29, 0.35, 0.30, 0.33]
    narrow, wide = mean_ci(values, 0.8), mean_ci(values, 0.99)
    assert wide.lo < narrow.lo < narrow.mean < narrow.hi < wide.hi


def test_paired_difference() -> None:
    a = [0.30, 0.32, 0.35, 0.31, 0.34]
    b = [0.28, 0.29, 0.33, 0.30, 0.31]  # a shares b's seed effects; diffs 0.02 .. 0.03
    est = paired_difference(a, b)
    assert est == pytest.approx(mean_ci([x - y for x, y in zip(a, b)]))
    assert est.mean == pytest.approx(0.022)
    assert est.lo > 0.0  # paired: clearly positive, although the unpaired intervals overlap
    assert mean_ci(a).lo < mean_ci(b).hi
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])
