"""Reward-function outputs: what ``check_rewards`` accepts, and one clear error for everything else."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentrl.rewards import RewardError
from latentrl.rollout import MAX_ABS_REWARD, check_rewards, score
from latentrl.tasks import DataError

PROMPTS = ["p0", "p1", "p2", "p3"]
COMPLETIONS = ["c0", "c1", "c2", "c3"]


def returning(value, name: str = "my_reward"):
    """A reward function that returns ``value`` whatever it is given."""

    def func(prompts, completions, **kwargs):
        return value

    func.__name__ = name
    return func


# ---------------------------------------------------------------------------------------------
# accepted outputs


@pytest.mark.parametrize(
    "values",
    [
        [1.0, 0.0, 0.5, -2.0],
        (1, 0, 0.5, -2),
        torch.tensor([1.0, 0.0, 0.5, -2.0]),
        torch.tensor([1.0, 0.0, 0.5, -2.0], dtype=torch.float64, requires_grad=True),
        np.array([1.0, 0.0, 0.5, -2.0]),
        np.array([1, 0, 0, -2]) + np.array([0, 0, 0.5, 0]),
        [np.float32(1.0), np.int64(0), 0.5, torch.tensor(-2.0)],
    ],
)
def test_numbers_tensors_and_arrays_are_accepted(values) -> None:
    out = check_rewards("r", values, 4)
    assert out.dtype == torch.float32 and out.shape == (4,)
    assert out.tolist() == [1.0, 0.0, 0.5, -2.0]


def test_bools_count_as_numbers() -> None:
    assert check_rewards("r", [True, False], 2).tolist() == [1.0, 0.0]
    assert check_rewards("r", torch.tensor([True, False]), 2).tolist() == [1.0, 0.0]
    assert check_rewards("r", np.array([True, False]), 2).tolist() == [1.0, 0.0]


def test_none_element_is_nan_for_that_function() -> None:
    out = check_rewards("r", [1.0, None, 0.0], 3)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == 0.0
    assert math.isnan(check_rewards("r", np.array([1.0, None], dtype=object), 2)[1])


def test_limit_is_inclusive() -> None:
    assert check_rewards("r", [MAX_ABS_REWARD, -MAX_ABS_REWARD], 2).tolist() == [1e6, -1e6]


# ---------------------------------------------------------------------------------------------
# rejected outputs


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        (None, r"^reward function my_reward returned None; return a list of 4 numbers"),
        ([1.0, 0.0, 1.0], r"^reward function my_reward returned 3 values for 4 completions$"),
        (torch.ones(5), r"returned 5 values for 4 completions"),
        ([1.0, 0.0, 1.0, "1.0"], r"^reward function my_reward returned a str at row 3 \('1\.0'\); return numbers$"),
        (["good", 0.0, 1.0, 1.0], r"returned a str at row 0 \('good'\)"),
        ([1.0, b"1", 1.0, 1.0], r"returned a bytes at row 1"),
        (np.array(["1", "0", "1", "0"]), r"returned a str at row 0 \('1'\)"),
        ([[1.0], [0.0], [1.0], [0.0]], r"returned a nested list at row 0 \(\[1\.0\]\); return one number per"),
        ([1.0, (0.0, 1.0), 1.0, 1.0], r"returned a nested tuple at row 1"),
        ([1.0, torch.ones(2), 1.0, 1.0], r"returned a nested Tensor at row 1"),
        (torch.ones(4, 1), r"returned a 2-D Tensor of shape \(4, 1\); return one number per completion"),
        (np.ones((2, 2)), r"returned a 2-D ndarray of shape \(2, 2\)"),
        (torch.tensor(1.0), r"returned a 0-D Tensor of shape \(\)"),
        ("1.0 0.0 1.0 0.0", r"^reward function my_reward returned a str; return a list of 4 numbers$"),
        ({"a": 1.0}, r"returned a dict; return a list of 4 numbers"),
        (1.0, r"returned a float; return a list"),
        ((x for x in [1.0, 0.0, 1.0, 0.0]), r"returned a generator"),
        ([1.0, {"r": 1}, 1.0, 1.0], r"returned a dict at row 1 \(\{'r': 1\}\); return numbers"),
        ([1.0, 1j, 1.0, 1.0], r"returned a complex at row 1"),
        ([1.0, float("nan"), float("inf"), 0.0], r"returned non-finite rewards at rows \[1, 2\]: \[nan, inf\]"),
        (torch.tensor([0.0, 0.0, 0.0, -math.inf]), r"returned non-finite rewards at rows \[3\]"),
        ([0.0, 2e6, 1.0, -5e7], r"returned rewards of magnitude above 1e\+06 at rows \[1, 3\]: \[2000000\.0, "
                                r"-50000000\.0\]; rewards that large overflow float32 gradients, rescale them"),
        ([0.0, 10**400, 0.0, 0.0], r"magnitude above 1e\+06 at rows \[1\]"),
        (np.array([0.0, 0.0, 1e7, 0.0], dtype=np.float32), r"magnitude above 1e\+06 at rows \[2\]"),
    ],
)  # fmt: skip
def test_bad_outputs_name_the_function(values, pattern: str) -> None:
    with pytest.raises(RewardError, match=pattern) as info:
        score([returning(values)], [1.0], PROMPTS, COMPLETIONS, {})
    assert "\n" not in str(info.value)


def test_reward_error_is_a_value_error_the_cli_reports() -> None:
    assert issubclass(RewardError, DataError) and issubclass(RewardError, ValueError)


def test_a_raising_function_is_wrapped_with_its_name() -> None:
    def broken(prompts, completions, answer, **kwargs):
        return [len(a) for a in answer]  # answer holds ints: TypeError

    with pytest.raises(RewardError, match=r"^reward function broken raised TypeError: object of type 'int'") as info:
        score([broken], [1.0], PROMPTS, COMPLETIONS, {"answer": [1, 2, 3, 4]})
    assert isinstance(info.value.__cause__, TypeError)


def test_missing_column_is_reported_as_the_function_raising() -> None:
    def needs_answer(prompts, completions, answer, **kwargs):
        return [1.0] * len(completions)

    with pytest.raises(RewardError, match=r"reward function needs_answer raised TypeError: .*answer"):
        score([needs_answer], [1.0], PROMPTS, COMPLETIONS, {})


# ---------------------------------------------------------------------------------------------
# score: weights, None rows, names


def test_weighted_sum_and_parts() -> None:
    total, parts = score(
        [returning([1.0, 0.0, 1.0, 0.0], "a"), returning(torch.tensor([0.5, 0.5, -1.0, 2.0]), "b")],
        [1.0, 2.0], PROMPTS, COMPLETIONS, {},
    )  # fmt: skip
    assert total.dtype == torch.float32 and total.tolist() == [2.0, 1.0, -1.0, 4.0]
    assert set(parts) == {"a", "b"} and parts["b"].tolist() == [0.5, 0.5, -1.0, 2.0]


def test_none_rows_are_skipped_in_the_sum() -> None:
    total, parts = score(
        [returning([1.0, None, 1.0, None], "a"), returning([None, 3.0, 2.0, 1.0], "b")],
        [1.0, 0.5], PROMPTS, COMPLETIONS, {},
    )  # fmt: skip
    assert total.tolist() == [1.0, 1.5, 2.0, 0.5]  # nansum over functions
    assert math.isnan(parts["a"][1]) and math.isnan(parts["b"][0])


def test_row_where_every_function_returned_none_is_an_error() -> None:
    funcs = [returning([1.0, None, None, 0.0], "a"), returning([None, None, None, 1.0], "b")]
    with pytest.raises(RewardError, match=r"no reward function applies to rows \[1, 2\]: every function \(a, b\)"):
        score(funcs, [1.0, 1.0], PROMPTS, COMPLETIONS, {})


def test_mismatched_weights_and_duplicate_names() -> None:
    with pytest.raises(RewardError, match="2 reward functions but 1 reward weights"):
        score([returning([0.0] * 4, "a"), returning([0.0] * 4, "b")], [1.0], PROMPTS, COMPLETIONS, {})
    with pytest.raises(RewardError, match="two reward functions are named a"):
        score([returning([0.0] * 4, "a"), returning([1.0] * 4, "a")], [1.0, 1.0], PROMPTS, COMPLETIONS, {})


def test_builtin_answer_match_scores() -> None:
    from latentrl.rewards import answer_match

    total, parts = score([answer_match], [1.0], PROMPTS, ["### 3", "### 4", "", "5"], {"answer": ["3", "3", "1", "5"]})
    assert total.tolist() == [1.0, 0.0, 0.0, 1.0] and parts["answer_match"].tolist() == [1.0, 0.0, 0.0, 1.0]
