"""Tasks: synthetic generators (determinism, split disjointness, correctness) and file loaders."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentrl.rewards import answer_match
from latentrl.tasks import (
    ARITH_DEFAULTS,
    FILE_FORMATS,
    SYNTHETIC_TASKS,
    DataError,
    Example,
    load_examples,
    write_jsonl,
)
from latentrl.tasks.base import split_of

GSM8K_TEST = Path(__file__).parents[2] / "shared/data/gsm8k/test.jsonl"
SEEDS = st.integers(min_value=0, max_value=2**31)


# ---------------------------------------------------------------- helpers (independent of the library)


def eval_chain(question: str, modulus: int) -> int:
    """Evaluate '4+7*3-2' strictly left to right modulo ``modulus``."""
    tokens = re.findall(r"\d+|[+\-*]", question)
    value = int(tokens[0]) % modulus
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        right = int(operand)
        value = {"+": value + right, "-": value - right, "*": value * right}[op] % modulus
    return value


def prosqa_parts(question: str) -> tuple[frozenset[str], str, tuple[str, str]]:
    """(facts, person, options) of a ProsQA question."""
    match = re.fullmatch(r"(.*) Is (\w+) a (\w+) or a (\w+)\?", question)
    assert match, question
    facts = frozenset(s.strip() + "." for s in match.group(1).split(".") if s.strip())
    return facts, match.group(2), (match.group(3), match.group(4))


def prosqa_reachable(facts: frozenset[str], person: str) -> set[str]:
    """Concepts reachable from ``person`` through the facts."""
    edges: dict[str, set[str]] = {}
    for fact in facts:
        match = re.fullmatch(r"(?:Every )?(\w+) is a (\w+)\.", fact)
        assert match, fact
        edges.setdefault(match.group(1), set()).add(match.group(2))
    found, stack = set(), [person]
    while stack:
        for child in edges.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def problem_key(task: str, example: Example) -> object:
    """What identifies a problem independently of presentation (fact order for ProsQA)."""
    if task == "prosqa":
        facts, person, options = prosqa_parts(example.question)
        return facts, person, frozenset(options)
    return example.question


# ---------------------------------------------------------------- synthetic tasks


def test_example_to_dict() -> None:
    example = Example(question="1+2", steps=("1+2=3",), answer="3")
    assert example.to_dict() == {"question": "1+2", "steps": ["1+2=3"], "answer": "3"}


def test_known_names() -> None:
    assert SYNTHETIC_TASKS == ("arith", "prosqa", "multiply")
    assert FILE_FORMATS == ("gsm8k", "gsm8k-aug", "coconut", "jsonl")
    assert ARITH_DEFAULTS == dict(num_steps=3, modulus=10, ops="+-*", min_steps=None)


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_deterministic_by_seed(task: str) -> None:
    first = load_examples(task, "train", n=50, seed=3)
    assert first == load_examples(task, "train", n=50, seed=3)
    assert first != load_examples(task, "train", n=50, seed=4)
    assert load_examples(task, "train", n=20, seed=3) == first[:20]


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
@settings(max_examples=8, deadline=None)
@given(train_seed=SEEDS, test_seed=SEEDS)
def test_train_validation_test_disjoint(task: str, train_seed: int, test_seed: int) -> None:
    train = {problem_key(task, e) for e in load_examples(task, "train", n=300, seed=train_seed)}
    validation = {problem_key(task, e) for e in load_examples(task, "validation", n=30, seed=test_seed)}
    test = {problem_key(task, e) for e in load_examples(task, "test", n=60, seed=test_seed)}
    assert not train & test and not train & validation and not validation & test


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_no_duplicates_within_split(task: str) -> None:
    for split, n in (("train", 500), ("test", 100)):
        keys = [problem_key(task, e) for e in load_examples(task, split, n=n, seed=1)]
        assert len(set(keys)) == n


def test_test_split_is_about_a_tenth_and_validation_a_twentieth() -> None:
    questions = [f"{a}*{b}" for a in range(100, 140) for b in range(100, 150)]
    splits = [split_of("multiply", q) for q in questions]
    assert 0.07 < splits.count("test") / len(questions) < 0.13
    assert 0.03 < splits.count("validation") / len(questions) < 0.07


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, modulus=st.integers(2, 40), num_steps=st.integers(1, 6), ops=st.sampled_from(["+", "-*", "+-*"]))
def test_arith_steps_recomputed(seed: int, modulus: int, num_steps: int, ops: str) -> None:
    for example in load_examples("arith", n=20, seed=seed, modulus=modulus, num_steps=num_steps, ops=ops):
        assert " " not in example.question
        assert int(example.answer) == eval_chain(example.question, modulus)
        assert len(example.steps) == num_steps
        operands = [int(x) for x in re.findall(r"\d+", example.question)]
        assert all(0 <= x < modulus for x in operands)
        assert set(re.findall(r"[+\-*]", example.question)) <= set(ops)
        value = operands[0]
        for step, right in zip(example.steps, operands[1:]):
            left, op, rhs, result = re.fullmatch(r"(\d+)([+\-*])(\d+)=(\d+)", step).groups()
            assert (int(left), int(rhs)) == (value, right)
            value = eval_chain(f"{left}{op}{rhs}", modulus)
            assert int(result) == value
        assert example.answer == str(value)


def test_arith_hand_worked_format() -> None:
    from latentrl.tasks.arith import solve

    assert solve([4, 7, 3, 2], ["+", "*", "-"], 10) == (("4+7=1", "1*3=3", "3-2=1"), 1)
    example = load_examples("arith", n=1, seed=0)[0]
    assert re.fullmatch(r"\d(?:[+\-*]\d){3}", example.question)
    assert re.fullmatch(r"\d", example.answer)


def test_arith_min_steps_range() -> None:
    lengths = {len(e.steps) for e in load_examples("arith", n=200, seed=0, num_steps=5, min_steps=2)}
    assert lengths == {2, 3, 4, 5}


def test_arith_tiny_space_allows_duplicates_or_fails_cleanly() -> None:
    knobs = dict(num_steps=1, modulus=2, ops="+")  # four problems in all
    space = [f"{a}+{b}" for a in range(2) for b in range(2)]
    for split in ("train", "test"):
        members = {q for q in space if split_of("arith", q) == split}
        if members:
            examples = load_examples("arith", split, n=10, **knobs)
            assert {e.question for e in examples} == members
        else:
            with pytest.raises(DataError, match=f"no {split} problems"):
                load_examples("arith", split, n=10, **knobs)


@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, digits=st.integers(1, 5))
def test_multiply_steps(seed: int, digits: int) -> None:
    for example in load_examples("multiply", n=10, seed=seed, digits=digits):
        a, b = (int(x) for x in example.question.split("*"))
        assert len(str(a)) == len(str(b)) == digits
        assert example.answer == str(a * b)
        partials = [int(step.split("=")[1]) for step in example.steps[:digits]]
        assert sum(partials) == a * b
        if digits > 1:
            assert example.steps[-1] == "+".join(map(str, partials)) + f"={a * b}"


def test_multiply_hand_worked() -> None:
    from latentrl.tasks.multiply import partial_product_steps

    assert partial_product_steps(123, 456) == ("123*6=738", "123*50=6150", "123*400=49200", "738+6150+49200=56088")


@settings(max_examples=15, deadline=None)
@given(seed=SEEDS, depth=st.integers(1, 5), extra=st.integers(0, 10))
def test_prosqa_exactly_one_option_reachable(seed: int, depth: int, extra: int) -> None:
    for example in load_examples("prosqa", n=10, seed=seed, depth=depth, num_concepts=depth + 5, extra_edges=extra):
        facts, person, options = prosqa_parts(example.question)
        reachable = prosqa_reachable(facts, person)
        assert sum(option in reachable for option in options) == 1
        target = next(option for option in options if option in reachable)
        assert example.answer == f"{person} is a {target}."
        assert len(example.steps) == depth
        assert set(example.steps) <= facts
        assert example.steps[0].startswith(f"{person} is a ")
        assert example.steps[-1].endswith(f" is a {target}.")


def test_unknown_task_knob_split_and_missing_n() -> None:
    with pytest.raises(DataError, match="unknown task 'nope'.*arith.*prosqa.*multiply.*gsm8k"):
        load_examples("nope", n=1)
    with pytest.raises(DataError, match="unknown knob 'digitz'.*valid knobs: digits"):
        load_examples("multiply", n=1, digitz=3)
    with pytest.raises(DataError, match="unknown knob 'hub'.*hub_config, hub_id"):
        load_examples("jsonl", path="x.jsonl", hub="a")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_examples("arith", "dev", n=1)
    with pytest.raises(DataError, match="pass n="):
        load_examples("arith")
    with pytest.raises(DataError, match="'modulus' must be"):
        load_examples("arith", n=1, modulus=1)
    with pytest.raises(DataError, match="'ops'"):
        load_examples("arith", n=1, ops="+/")
    with pytest.raises(DataError, match="'num_concepts' must be >= depth"):
        load_examples("prosqa", n=1, depth=5, num_concepts=4)


def test_knobs_accept_numeric_strings() -> None:
    assert load_examples("arith", n=5, num_steps="2") == load_examples("arith", n=5, num_steps=2)


# ---------------------------------------------------------------- file formats


def test_gsm8k_real_file() -> None:
    if not GSM8K_TEST.is_file():
        pytest.skip(f"{GSM8K_TEST} not present")
    examples = load_examples("gsm8k", path=str(GSM8K_TEST))
    assert len(examples) == 1319
    assert examples[0].answer == "18"
    assert examples[0].steps == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.",
        "She makes 9 * 2 = $18 every day at the farmer\u2019s market.",
    )
    for example in examples:
        Decimal(example.answer)  # every gold answer is a number
        assert example.steps and not any("<<" in step for step in example.steps)
    solutions = [json.loads(line)["answer"] for line in GSM8K_TEST.read_text().splitlines() if line.strip()]
    rewards = answer_match([""] * len(solutions), solutions, [e.answer for e in examples])
    assert rewards == [1.0] * 1319
    assert load_examples("gsm8k", path=str(GSM8K_TEST), n=7) == examples[:7]


def test_gsm8k_aug_text_and_json(tmp_path: Path) -> None:
    text = tmp_path / "train.txt"
    text.write_text("Natalia sold 48 clips.||<<48/2=24>> <<48+24=72>> #### 72\n\nHow many?||<<2*3=6>> #### 1,006\n")
    assert load_examples("gsm8k-aug", path=text) == [
        Example("Natalia sold 48 clips.", ("48/2=24", "48+24=72"), "72"),
        Example("How many?", ("2*3=6",), "1006"),
    ]
    hub_form = tmp_path / "train.jsonl"
    rows = [
        {"question": "Q1", "cot": "<<1+1=2>> <<2*2=4>>", "answer": "4"},
        {"question": "Q2", "cot": ["<<3+3=6>>"], "answer": "#### 6"},
    ]
    hub_form.write_text("\n".join(json.dumps(r) for r in rows))
    assert load_examples("gsm8k-aug", path=hub_form) == [
        Example("Q1", ("1+1=2", "2*2=4"), "4"),
        Example("Q2", ("3+3=6",), "6"),
    ]
    bad = tmp_path / "bad.txt"
    bad.write_text("ok||<<1=1>> #### 1\nno separator here\n")
    with pytest.raises(DataError, match=re.escape(f"{bad}:2: expected 'question||")):
        load_examples("gsm8k-aug", path=bad)


def test_coconut_json_list(tmp_path: Path) -> None:
    path = tmp_path / "prosqa_test.json"
    items = [
        {"question": "Q1", "steps": ["s1", "s2"], "answer": "A1", "idx_to_symbol": ["x"]},
        {"question": "Q2", "steps": [], "answer": "A2"},
    ]
    path.write_text(json.dumps(items, indent=2))
    assert load_examples("coconut", path=path) == [Example("Q1", ("s1", "s2"), "A1"), Example("Q2", (), "A2")]
    assert load_examples("coconut", path=path, n=1) == [Example("Q1", ("s1", "s2"), "A1")]
    items[1] = {"question": "Q2", "steps": []}
    path.write_text("[\n" + ",\n".join(json.dumps(item) for item in items) + "\n]")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: missing field 'answer'")):
        load_examples("coconut", path=path)
    path.write_text('[\n{"question": "Q", "answer": "A"},\n{"question": \n]')
    with pytest.raises(DataError, match=re.escape(f"{path}:4: invalid JSON")):
        load_examples("coconut", path=path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q", "answer": ', "invalid JSON"),
        ('{"question": "q"}', "missing field 'answer'"),
        ('{"question": 3, "answer": "a"}', "field 'question' must be a string"),
        ('{"question": "q", "steps": "s", "answer": "a"}', "field 'steps' must be a list of strings"),
        ('["q", "a"]', "expected a JSON object"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: {message}")):
        load_examples("jsonl", path=path)


def test_gsm8k_without_final_answer(tmp_path: Path) -> None:
    path = tmp_path / "gsm.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'answer' has no '####")):
        load_examples("gsm8k", path=path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match=re.escape(f"{missing}: no such file")):
        load_examples("jsonl", path=missing)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=re.escape(f"{empty}: empty file")):
        load_examples("jsonl", path=empty)
    with pytest.raises(DataError, match="needs path=|pass path="):
        load_examples("coconut")


def test_write_jsonl_round_trip(tmp_path: Path) -> None:
    examples = load_examples("prosqa", n=5) + [Example("q \u00e9", (), "a"), Example("2+2", ("2+2=4",), "4")]
    path = tmp_path / "out" / "data.jsonl"
    write_jsonl(examples, path)
    assert load_examples("jsonl", path=str(path)) == examples
    assert [p.name for p in path.parent.iterdir()] == ["data.jsonl"]  # no temporary file left behind
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert set(first) == {"question", "steps", "answer"}
    write_jsonl(examples[:1], path)  # overwrite in place
    assert load_examples("jsonl", path=path) == examples[:1]


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q", "steps": ["s"], "answer": "a"}, {"question": "r"}]), path)
    with pytest.raises(DataError, match=re.escape(f"{path}:row 2: missing field 'answer'")):
        load_examples("jsonl", path=path)
    assert load_examples("jsonl", path=path, n=1) == [Example("q", ("s",), "a")]
