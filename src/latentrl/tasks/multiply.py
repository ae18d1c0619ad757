"""``multiply``: multi-digit multiplication with partial products (implicit-CoT style).

Both operands have ``digits`` digits (no leading zero). One step per digit of the second
operand, lowest first, shifted to its place value, then one step summing them::

    question "123*456"
    steps    ("123*6=738", "123*50=6150", "123*400=49200", "738+6150+49200=56088")
    answer   "56088"

With one-digit operands there is a single partial product and no sum step.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from latentrl.tasks.base import Example, Problem, int_knob

TASK = "multiply"
MULTIPLY_DEFAULTS: dict[str, Any] = dict(digits=3)
MAX_DIGITS = 30


def check_knobs(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Validated knobs."""
    return dict(digits=int_knob(TASK, "digits", knobs["digits"], 1, MAX_DIGITS))


def partial_product_steps(a: int, b: int) -> tuple[str, ...]:
    """``a*b`` worked as one partial product per digit of ``b`` (place value kept), then their sum."""
    digits_of_b = [int(d) for d in reversed(str(b))]
    partials = [a * digit * 10**place for place, digit in enumerate(digits_of_b)]
    steps = [f"{a}*{digit * 10**place}={partial}" for place, (digit, partial) in enumerate(zip(digits_of_b, partials))]
    if len(partials) > 1:
        steps.append("+".join(str(p) for p in partials) + f"={sum(partials)}")
    return tuple(steps)


def make_problem(rng: random.Random, knobs: Mapping[str, Any]) -> Problem:
    """Draw one product; its canonical text is the question."""
    low, high = 10 ** (knobs["digits"] - 1), 10 ** knobs["digits"] - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    question = f"{a}*{b}"
    return Example(question=question, steps=partial_product_steps(a, b), answer=str(a * b)), question
