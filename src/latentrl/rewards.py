"""Answer extraction, normalisation and the answer-match reward (TRL reward-function signature).

The model writes its answer after a ``###`` marker (GSM8K solutions use ``####``):
``extract_answer`` takes the first line after the last marker, else the last number in the
text. ``answers_match`` compares numbers numerically, other answers as normalised strings,
and falls back to math-verify for expressions (fractions, LaTeX); it never raises.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from latentrl.tasks.base import DataError

REL_TOL: float = 1e-6
_MARKER = re.compile(r"#{3,}")
# End-of-sequence-like text that may follow an answer: <|endoftext|>, <|im_end|>, </s>, <eos>, ...
_EOS = re.compile(r"<\|[^|>]*\|>|</s>|<eos>|<end_of_turn>", re.IGNORECASE)
# A number: optional sign (not when it is a binary minus after a word/digit), thousands commas, decimals.
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_MATHY = re.compile(r"[\d\\]")


class RewardError(DataError):
    """A reward function raised, or returned something other than one finite number (or None) per
    completion; the message names the function and the rows at fault."""


def extract_answer(text: str) -> str | None:
    """The answer a completion states, or None.

    After the last ``###``/``####`` marker: the first non-empty line, cut at EOS-like text.
    Without a marker: the last number in the text.
    """
    markers = list(_MARKER.finditer(text))
    if markers:
        after = _EOS.split(text[markers[-1].end():], maxsplit=1)[0].strip()
        answer = after.splitlines()[0].strip() if after else ""
        return answer or None
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_decimal(text: str) -> Decimal | None:
    """``text`` as a Decimal if it is a plain number (already stripped of commas and '$')."""
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _strip_decorations(ans: str) -> str:
    """Remove commas, '$', surrounding whitespace and trailing periods."""
    return ans.replace(",", "").replace("$", "").strip().rstrip(".").strip()


def normalize_answer(ans: str) -> str:
    """Canonical text of an answer: '1,000' -> '1000', '$5.' -> '5', '.5' -> '0.5', '5.0' -> '5'.

    Non-numeric answers are lowercased with whitespace collapsed.
    """
    text = _strip_decorations(ans)
    number = _as_decimal(text)
    if number is None:
        return " ".join(text.lower().split())
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def _numbers_equal(a: Decimal, b: Decimal) -> bool:
    """Exact for integers, relative tolerance REL_TOL otherwise."""
    if a == a.to_integral_value() and b == b.to_integral_value():
        return a == b
    return abs(a - b) <= Decimal(REL_TOL) * max(abs(a), abs(b))


class _DropTimeoutWarnings(logging.Filter):
    """math-verify warns on every call made with its (signal-based) timeout disabled; we disable it on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_FILTER_INSTALLED = False


def _math_verify_match(pred: str, gold: str) -> bool:
    """math-verify equivalence; signal timeouts only in the main thread (signals fail elsewhere)."""
    global _FILTER_INSTALLED
    from math_verify import parse, verify

    if not _FILTER_INSTALLED:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutWarnings())
        _FILTER_INSTALLED = True
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(gold, parsing_timeout=timeout)
    pred_parsed = parse(pred, parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def answers_match(pred: str | None, gold: str) -> bool:
    """Whether ``pred`` states ``gold``: numerically, else as normalised strings, else by math-verify."""
    if pred is None:
        return False
    try:
        pred_number = _as_decimal(_strip_decorations(pred))
        gold_number = _as_decimal(_strip_decorations(gold))
        if pred_number is not None and gold_number is not None:
            return _numbers_equal(pred_number, gold_number)
        if normalize_answer(pred) == normalize_answer(gold):
            return True
        if not _MATHY.search(gold) or not _MATHY.search(pred):
            return False  # words (e.g. ProsQA sentences): the string comparison is final
        return _math_verify_match(pred, gold)
    except Exception:  # math-verify / sympy errors and timeouts count as a mismatch
        return False


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the last assistant message of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    messages = list(completion)
    assistant = [m for m in messages if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
    return str(assistant[-1].get("content", "")) if assistant else ""


def answer_match(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **kwargs: Any) -> list[float]:
    """TRL reward function: 1.0 where the completion's extracted answer matches the gold ``answer``, else 0.0.

    ``completions`` are strings or conversations ``[{"role": "assistant", "content": ...}]``;
    ``answer`` is the dataset column of gold answers, one per completion. Extra columns are ignored.
    """
    if len(answer) != len(completions):
        raise ValueError(f"answer_match: {len(completions)} completions but {len(answer)} gold answers")
    return [
        1.0 if answers_match(extract_answer(completion_text(completion)), str(gold)) else 0.0
        for completion, gold in zip(completions, answer)
    ]
