"""The record every task produces, the error every loader raises, and the shared
machinery of the synthetic generators: knob checking, the train/test partition
and deterministic de-duplicated sampling.

Train/validation/test partition: a problem belongs to the test split when the SHA-256 of
its canonical text (``"<task>|<canonical>"``) falls in the first ``TEST_FRACTION`` of the
hash range, to validation when it falls in the next ``VALIDATION_FRACTION``, otherwise to
train. The partition depends on the problem alone, never on the seed, so the three splits
are disjoint whatever seeds are used. Validation is what model selection (early stopping)
looks at, so that the test split stays untouched until the final evaluation.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

SPLITS: tuple[str, ...] = ("train", "validation", "test")
TEST_FRACTION: float = 0.1
VALIDATION_FRACTION: float = 0.05
_MAX_MISSES: int = 2000  # consecutive draws that add nothing before giving up on uniqueness


@dataclass(frozen=True)
class Example:
    """One problem: the question, its worked steps (may be empty) and the gold answer."""

    question: str
    steps: tuple[str, ...]
    answer: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"question", "steps": list, "answer"}``."""
        return {"question": self.question, "steps": list(self.steps), "answer": self.answer}


class DataError(ValueError):
    """Bad data or a bad request; the message names the file and line, or the field/knob, at fault."""


# A generator draws one problem: (example, canonical text used for the split hash and de-duplication).
Problem = tuple[Example, str]
MakeProblem = Callable[[random.Random, Mapping[str, Any]], Problem]


def resolve_knobs(task: str, defaults: Mapping[str, Any], knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``knobs``; an unknown knob raises DataError listing the valid ones."""
    unknown = sorted(set(knobs) - set(defaults))
    if unknown:
        raise DataError(
            f"unknown knob {unknown[0]!r} for task {task!r}; valid knobs: {', '.join(sorted(defaults)) or '(none)'}"
        )
    return {**defaults, **knobs}


def int_knob(task: str, name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum]; numeric strings (from a command line) are accepted."""
    try:
        number = int(value) if not isinstance(value, (bool, float)) else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        raise DataError(f"task {task!r}: knob {name!r} must be an integer, got {value!r}")
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise DataError(f"task {task!r}: knob {name!r} must be {bound}, got {number}")
    return number


def split_of(task: str, canonical: str) -> str:
    """The split a problem belongs to, from a stable hash of its canonical text."""
    digest = hashlib.sha256(f"{task}|{canonical}".encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    if bucket < TEST_FRACTION:
        return "test"
    return "validation" if bucket < TEST_FRACTION + VALIDATION_FRACTION else "train"


def check_split(split: str) -> str:
    """``split`` itself if it is one of SPLITS, else DataError."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for a synthetic task; use one of: {', '.join(SPLITS)}")
    return split


def make_rng(task: str, split: str, seed: int, knobs: Mapping[str, Any]) -> random.Random:
    """A generator seeded from (task, split, seed, resolved knobs), stable across processes and runs."""
    key = json.dumps([task, split, seed, dict(sorted(knobs.items()))], sort_keys=True, default=str)
    return random.Random(hashlib.sha256(key.encode("utf-8")).hexdigest())


def sample_problems(
    task: str, make: MakeProblem, split: str, n: int, seed: int, knobs: Mapping[str, Any]
) -> list[Example]:
    """Draw ``n`` problems of ``split``, deterministically, without duplicates while the space allows.

    Draws outside the split are rejected. After ``_MAX_MISSES`` consecutive draws that add nothing
    new, duplicates are allowed (the space is exhausted); if the split has no problem at all, DataError.
    """
    rng = make_rng(task, check_split(split), seed, knobs)
    examples: list[Example] = []
    seen: set[str] = set()
    misses = 0
    while len(examples) < n:
        example, canonical = make(rng, knobs)
        in_split = split_of(task, canonical) == split
        allow_duplicate = misses >= _MAX_MISSES and bool(seen)
        if in_split and (canonical not in seen or allow_duplicate):
            examples.append(example)
            seen.add(canonical)
            misses = 0 if not allow_duplicate else misses
            continue
        misses += 1
        if misses >= _MAX_MISSES and not seen:
            raise DataError(f"task {task!r} with knobs {dict(knobs)} has no {split} problems; enlarge the problem space")
    return examples
