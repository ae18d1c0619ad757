"""Rewards: answer extraction, normalisation, matching and the TRL-style reward function."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentrl.rewards import answer_match, answers_match, extract_answer, normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes $18.\n#### 18", "18"),
        ("#### 1,000", "1,000"),
        ("step one\n### 42<|endoftext|>", "42"),
        ("### 7</s> trailing", "7"),
        ("### 5\nmore text 99", "5"),
        ("#### 3 #### 4", "4"),  # the last marker wins
        ("### Tom is a yimpus.", "Tom is a yimpus."),
        ("the total is 12 apples, then -3 remain", "-3"),  # last number, sign kept
        ("5-3", "3"),  # binary minus is not a sign
        ("costs .5 dollars", ".5"),
        ("about 1,234.5 units.", "1,234.5"),
        ("no answer here", None),
        ("### ", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("1,000", "1000"),
        ("$5.", "5"),
        (".5", "0.5"),
        ("5.0", "5"),
        ("-3", "-3"),
        (" 1.50 ", "1.5"),
        ("Tom  is a\tYimpus.", "tom is a yimpus"),
    ],
)
def test_normalize_answer(answer: str, expected: str) -> None:
    assert normalize_answer(answer) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("1,000", "1000", True),
        ("$5.", "5", True),
        (".5", "0.5", True),
        ("5.0", "5", True),
        ("-3", "3", False),
        ("0.3333333", "0.33333333", True),  # floats: 1e-6 relative
        ("0.33", "0.333", False),
        ("1000001", "1000000", False),  # ints: exact
        ("Tom is a yimpus.", "tom is a yimpus", True),
        ("Tom is a zorpus.", "Tom is a yimpus.", False),
        ("1/2", "0.5", True),  # math-verify fallback
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{1}{3}", "0.5", False),
        (None, "5", False),
        ("((((", "5", False),
    ],
)
def test_answers_match(pred: str | None, gold: str, expected: bool) -> None:
    assert answers_match(pred, gold) is expected


def test_answers_match_in_worker_thread() -> None:
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.extend([answers_match("1/2", "0.5"), answers_match("1/3", "0.5")]))
    worker.start()
    worker.join()
    assert results == [True, False]


def test_answer_match_strings_and_conversations() -> None:
    completions = [
        "2+2=4\n### 4",
        "### 5",
        [{"role": "assistant", "content": "so #### 1,000"}],
        [{"role": "user", "content": "### 7"}, {"role": "assistant", "content": "I think 8"}],
        [{"role": "assistant", "content": "no idea"}],
    ]
    gold = ["4", "4", "1000", "7", "3"]
    assert answer_match(["p"] * 5, completions, gold, extra_column=[0] * 5) == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert answer_match(prompts=["p"], completions=["#### 2"], answer=["2"]) == [1.0]


@settings(max_examples=100, deadline=None)
@given(x=st.integers(-(10**12), 10**12))
def test_integer_properties(x: int) -> None:
    assert normalize_answer(f"{x:,}") == str(x)
    assert extract_answer(f"working...\n#### {x:,}") == f"{x:,}"
    assert answers_match(extract_answer(f"so the answer is {x}"), str(x))
    assert answers_match(f"${x:,}.", f"{x}.0")


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40))
def test_never_raises_and_normalize_idempotent(text: str) -> None:
    extracted = extract_answer(text)
    assert extracted is None or isinstance(extracted, str)
    assert normalize_answer(normalize_answer(text)) == normalize_answer(text)
    assert isinstance(answers_match(text, "12"), bool)
