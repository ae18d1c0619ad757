"""``arith``: chains of modular arithmetic, evaluated strictly left to right.

Written without spaces for character-level tokenizers::

    question "4+7*3-2"   steps ("4+7=1", "1*3=3", "3-2=1")   answer "1"      (modulus 10)

Every operand is in [0, modulus) and every intermediate value is reduced modulo ``modulus``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from latentrl.tasks.base import DataError, Example, Problem, int_knob

TASK = "arith"
ARITH_DEFAULTS: dict[str, Any] = dict(num_steps=3, modulus=10, ops="+-*", min_steps=None)
VALID_OPS: str = "+-*"


def apply_op(left: int, op: str, right: int, modulus: int) -> int:
    """``left op right`` reduced modulo ``modulus``."""
    if op == "+":
        return (left + right) % modulus
    if op == "-":
        return (left - right) % modulus
    if op == "*":
        return (left * right) % modulus
    raise ValueError(f"unknown operator {op!r}")


def check_knobs(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Validated knobs with ``min_steps`` resolved (None -> num_steps)."""
    num_steps = int_knob(TASK, "num_steps", knobs["num_steps"], 1)
    modulus = int_knob(TASK, "modulus", knobs["modulus"], 2)
    raw_min = knobs["min_steps"]
    min_steps = num_steps if raw_min is None else int_knob(TASK, "min_steps", raw_min, 1, num_steps)
    ops = knobs["ops"]
    if not isinstance(ops, str) or not ops or any(op not in VALID_OPS for op in ops):
        raise DataError(f"task {TASK!r}: knob 'ops' must be a non-empty string of {VALID_OPS!r}, got {ops!r}")
    ops = "".join(sorted(set(ops), key=VALID_OPS.index))
    return dict(num_steps=num_steps, modulus=modulus, ops=ops, min_steps=min_steps)


def solve(operands: list[int], operators: list[str], modulus: int) -> tuple[tuple[str, ...], int]:
    """The worked steps and the final value of a chain, left to right."""
    value = operands[0] % modulus
    steps = []
    for op, right in zip(operators, operands[1:]):
        result = apply_op(value, op, right, modulus)
        steps.append(f"{value}{op}{right}={result}")
        value = result
    return tuple(steps), value


def make_problem(rng: random.Random, knobs: Mapping[str, Any]) -> Problem:
    """Draw one chain; its canonical text is the question."""
    modulus = knobs["modulus"]
    num_steps = rng.randint(knobs["min_steps"], knobs["num_steps"])
    operands = [rng.randrange(modulus) for _ in range(num_steps + 1)]
    operators = [rng.choice(knobs["ops"]) for _ in range(num_steps)]
    question = str(operands[0]) + "".join(f"{op}{x}" for op, x in zip(operators, operands[1:]))
    steps, value = solve(operands, operators, modulus)
    return Example(question=question, steps=steps, answer=str(value)), question
