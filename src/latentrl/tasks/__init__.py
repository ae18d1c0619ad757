"""Tasks: synthetic problem generators and readers of reasoning datasets, behind one entry point.

>>> examples = load_examples("arith", split="train", n=100, seed=0, num_steps=3)
>>> examples[0].question, examples[0].steps, examples[0].answer   # e.g. "4+7*3", ("4+7=1", "1*3=3"), "3"

Synthetic tasks (``SYNTHETIC_TASKS``) generate ``n`` problems deterministically from
(task, split, seed, knobs); train, validation and test never overlap. File formats (``FILE_FORMATS``)
read a local file, or for gsm8k / gsm8k-aug with no path, a Hugging Face Hub dataset.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from latentrl.tasks import arith, multiply, prosqa
from latentrl.tasks.arith import ARITH_DEFAULTS
from latentrl.tasks.base import SPLITS, DataError, Example, MakeProblem, resolve_knobs, sample_problems
from latentrl.tasks.files import FILE_FORMATS, FILE_KNOBS, hub_examples, read_examples, write_jsonl
from latentrl.tasks.multiply import MULTIPLY_DEFAULTS
from latentrl.tasks.prosqa import PROSQA_DEFAULTS


@dataclass(frozen=True)
class SyntheticTask:
    """A generator: its default knobs, a knob validator and a one-problem sampler."""

    defaults: Mapping[str, Any]
    check_knobs: Callable[[Mapping[str, Any]], dict[str, Any]]
    make_problem: MakeProblem


_SYNTHETIC: dict[str, SyntheticTask] = {
    "arith": SyntheticTask(ARITH_DEFAULTS, arith.check_knobs, arith.make_problem),
    "prosqa": SyntheticTask(PROSQA_DEFAULTS, prosqa.check_knobs, prosqa.make_problem),
    "multiply": SyntheticTask(MULTIPLY_DEFAULTS, multiply.check_knobs, multiply.make_problem),
}
SYNTHETIC_TASKS: tuple[str, ...] = tuple(_SYNTHETIC)


def load_examples(
    task: str,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    path: str | os.PathLike[str] | None = None,
    **knobs: Any,
) -> list[Example]:
    """Examples of ``task``: generated (synthetic tasks) or read (file formats).

    Synthetic: ``n`` problems (required) of ``split`` ("train", "validation" or "test"), a pure function of
    (task, split, seed, knobs). Files: the first ``n`` (default all) examples of ``path``
    (.jsonl/.json/.parquet); ``split`` and ``seed`` are ignored. With no path, gsm8k and
    gsm8k-aug load ``split`` of a Hub dataset (knobs ``hub_id``, ``hub_config``) — network access.
    Raises DataError for an unknown task, knob or split, bad ``n`` and any fault in the data.
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise DataError(f"n must be a non-negative integer or None, got {n!r}")
    if task in _SYNTHETIC:
        return _generate(task, split, n, seed, path, knobs)
    if task in FILE_FORMATS:
        options = resolve_knobs(task, FILE_KNOBS, knobs)
        if path is not None:
            return read_examples(task, path, n)
        return hub_examples(task, split, n, options["hub_id"], options["hub_config"])
    known = ", ".join(SYNTHETIC_TASKS + FILE_FORMATS)
    raise DataError(f"unknown task {task!r}; known tasks: {known}")


def _generate(
    task: str, split: str, n: int | None, seed: int, path: str | os.PathLike[str] | None, knobs: Mapping[str, Any]
) -> list[Example]:
    """``n`` problems of a synthetic task."""
    spec = _SYNTHETIC[task]
    if path is not None:
        raise DataError(f"task {task!r} is generated, not read: drop path={path!r}")
    if n is None:
        raise DataError(f"task {task!r} is synthetic: pass n= (the number of problems to generate)")
    resolved = spec.check_knobs(resolve_knobs(task, spec.defaults, knobs))
    return sample_problems(task, spec.make_problem, split, n, seed, resolved)


__all__ = [
    "ARITH_DEFAULTS",
    "FILE_FORMATS",
    "MULTIPLY_DEFAULTS",
    "PROSQA_DEFAULTS",
    "SPLITS",
    "SYNTHETIC_TASKS",
    "DataError",
    "Example",
    "load_examples",
    "write_jsonl",
]
