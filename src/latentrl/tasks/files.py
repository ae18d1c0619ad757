"""Reading and writing examples on disk (and, on request, from the Hugging Face Hub).

Formats (``FILE_FORMATS``):

- ``gsm8k``: JSONL ``{"question", "answer"}``; ``answer`` is a worked solution ending in
  ``#### <number>``. Steps are its non-empty lines before ``####`` with the calculator
  annotations ``<<...>>`` removed; the answer is the text after ``####`` without commas.
- ``gsm8k-aug``: implicit-CoT text lines ``question||<<a>> <<b>> #### answer`` (steps are the
  ``<<...>>`` contents), or JSON objects ``{"question", "cot", "answer"}`` as on the Hub,
  ``cot`` a string of ``<<...>>`` groups or a list of steps (``steps`` is accepted for ``cot``).
- ``coconut``: a JSON list ``[{"question", "steps", "answer"}, ...]`` (the Coconut repository's files).
- ``jsonl``: one ``{"question", "steps" (optional), "answer"}`` object per line.

Files may be ``.jsonl`` (or any line-based text), ``.json`` (a list, or JSON lines) or ``.parquet``.
Every error names the file and the 1-based line (a row number for parquet) at fault.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from latentrl.tasks.base import DataError, Example

FILE_FORMATS: tuple[str, ...] = ("gsm8k", "gsm8k-aug", "coconut", "jsonl")
# Hub dataset (id, config) read when no path is given; overridable with the knobs hub_id / hub_config.
HUB_DEFAULTS: dict[str, tuple[str, str | None]] = {
    "gsm8k": ("openai/gsm8k", "main"),
    "gsm8k-aug": ("casperhansen/gsm8k_synthetic_cot", None),
}
FILE_KNOBS: dict[str, Any] = dict(hub_id=None, hub_config=None)

_CALCULATOR = re.compile(r"<<[^>]*>>")
_CALCULATOR_BODY = re.compile(r"<<(.*?)>>")
_JSON_WHITESPACE = " \t\r\n"

Record = tuple[str, Any]  # (where: "FILE:LINE", parsed record)


# ---------------------------------------------------------------- reading raw records


def _read_text(path: Path) -> str:
    """The file's text; DataError for a missing, unreadable or empty file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error})") from error
    if not text.strip():
        raise DataError(f"{path}: empty file")
    return text


def _parse_json(text: str, where: str) -> Any:
    """``json.loads`` with errors as DataError naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: invalid JSON ({error.msg} at column {error.colno})") from error


def _line_records(path: Path, text: str, raw_text_lines: bool) -> Iterator[Record]:
    """One record per non-blank line; a line not starting with '{' stays a string if ``raw_text_lines``."""
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        where = f"{path}:{number}"
        yield where, line if raw_text_lines and not line.startswith("{") else _parse_json(line, where)


def _skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _JSON_WHITESPACE:
        pos += 1
    return pos


def _json_list_records(path: Path, text: str) -> Iterator[Record]:
    """The items of a JSON list, each with the line its item starts on."""
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def where(pos: int) -> str:
        nonlocal line, counted
        line, counted = line + text.count("\n", counted, pos), pos
        return f"{path}:{line}"

    pos = _skip_whitespace(text, 0)
    if not text.startswith("[", pos):
        raise DataError(f"{where(pos)}: expected a JSON list of objects")
    pos = _skip_whitespace(text, pos + 1)
    while not text.startswith("]", pos):
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from error
        yield where(pos), item
        pos = _skip_whitespace(text, end)
        if text.startswith(",", pos):
            pos = _skip_whitespace(text, pos + 1)
        elif not text.startswith("]", pos):
            raise DataError(f"{where(pos)}: invalid JSON (expected ',' or ']')")


def _parquet_records(path: Path) -> Iterator[Record]:
    """The rows of a parquet file as dicts, numbered from 1."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read parquet ({error})") from error
    if not rows:
        raise DataError(f"{path}: empty file")
    for number, row in enumerate(rows, start=1):
        yield f"{path}:row {number}", row


def read_records(path: str | os.PathLike[str], raw_text_lines: bool = False) -> Iterator[Record]:
    """Raw records of a .jsonl/.txt (line per record), .json (a list, or JSON lines) or .parquet file."""
    path = Path(path)
    if path.suffix == ".parquet":
        yield from _parquet_records(path)
        return
    text = _read_text(path)
    if path.suffix == ".json" and text.lstrip().startswith("["):
        yield from _json_list_records(path, text)
    else:
        yield from _line_records(path, text, raw_text_lines)


# ---------------------------------------------------------------- records -> examples


def _field(record: Any, name: str, where: str, required: bool = True) -> Any:
    """``record[name]``; DataError if the record is not an object or a required field is missing."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if name not in record or record[name] is None:
        if required:
            raise DataError(f"{where}: missing field {name!r}")
        return None
    return record[name]


def _text(value: Any, name: str, where: str) -> str:
    """A string field; numbers are accepted for answers (written as text)."""
    if isinstance(value, str):
        return value
    if name == "answer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")


def _steps(value: Any, where: str, name: str = "steps") -> tuple[str, ...]:
    """A list-of-strings field (None -> no steps)."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(step, str) for step in value):
        raise DataError(f"{where}: field {name!r} must be a list of strings")
    return tuple(value)


def _final_number(text: str) -> str:
    """An answer as written after '####': stripped, commas removed."""
    return text.strip().replace(",", "")


def parse_gsm8k_solution(solution: str, where: str) -> tuple[tuple[str, ...], str]:
    """(steps, answer) of a GSM8K worked solution ending in ``#### <number>``."""
    body, marker, final = solution.rpartition("####")
    if not marker:
        raise DataError(f"{where}: field 'answer' has no '#### <answer>' line")
    steps = tuple(s for s in (_CALCULATOR.sub("", line).strip() for line in body.splitlines()) if s)
    answer = _final_number(final)
    if not answer:
        raise DataError(f"{where}: field 'answer' is empty after '####'")
    return steps, answer


def _gsm8k_example(record: Any, where: str) -> Example:
    question = _text(_field(record, "question", where), "question", where)
    steps, answer = parse_gsm8k_solution(_text(_field(record, "answer", where), "answer", where), where)
    return Example(question=question.strip(), steps=steps, answer=answer)


def _aug_steps(cot: Any, where: str, name: str) -> tuple[str, ...]:
    """Steps of an implicit-CoT chain: the ``<<...>>`` groups of a string, or a list of steps."""
    if isinstance(cot, str):
        return tuple(body.strip() for body in _CALCULATOR_BODY.findall(cot)) or tuple(cot.split())
    steps = _steps(cot, where, name)
    return tuple(step.strip().removeprefix("<<").removesuffix(">>").strip() for step in steps)


def _gsm8k_aug_example(record: Any, where: str) -> Example:
    if isinstance(record, str):
        question, bar, rest = record.partition("||")
        cot, marker, answer = rest.rpartition("####")
        if not bar or not marker:
            raise DataError(f"{where}: expected 'question||<<step>> ... #### answer'")
        return Example(question=question.strip(), steps=_aug_steps(cot, where, "cot"), answer=_final_number(answer))
    question = _text(_field(record, "question", where), "question", where)
    name = "cot" if _field(record, "cot", where, required=False) is not None else "steps"
    steps = _aug_steps(_field(record, name, where, required=False) or [], where, name)
    answer = _text(_field(record, "answer", where), "answer", where)
    return Example(question=question.strip(), steps=steps, answer=_final_number(answer.rpartition("####")[2]))


def _plain_example(record: Any, where: str) -> Example:
    """``{"question", "steps" (optional), "answer"}`` (coconut and jsonl formats)."""
    question = _text(_field(record, "question", where), "question", where)
    steps = _steps(_field(record, "steps", where, required=False), where)
    answer = _text(_field(record, "answer", where), "answer", where)
    return Example(question=question, steps=steps, answer=answer)


_CONVERTERS = {
    "gsm8k": _gsm8k_example,
    "gsm8k-aug": _gsm8k_aug_example,
    "coconut": _plain_example,
    "jsonl": _plain_example,
}


def examples_from_records(fmt: str, records: Iterable[Record], n: int | None = None) -> list[Example]:
    """Convert records of format ``fmt``, stopping after ``n`` examples."""
    convert = _CONVERTERS[fmt]
    return [convert(record, where) for where, record in islice(records, n)]


def read_examples(fmt: str, path: str | os.PathLike[str], n: int | None = None) -> list[Example]:
    """The first ``n`` (default all) examples of a file in format ``fmt``."""
    if n == 0:
        return []
    examples = examples_from_records(fmt, read_records(path, raw_text_lines=fmt == "gsm8k-aug"), n)
    if not examples:
        raise DataError(f"{path}: no examples found")
    return examples


def hub_examples(fmt: str, split: str, n: int | None, hub_id: str | None, hub_config: str | None) -> list[Example]:
    """Examples of a Hub dataset (network access; only when the user asks for it)."""
    if fmt not in HUB_DEFAULTS:
        raise DataError(f"task {fmt!r} reads a file: pass path=")
    default_id, default_config = HUB_DEFAULTS[fmt]
    if hub_id is None:
        hub_id, hub_config = default_id, hub_config or default_config
    import datasets

    rows = datasets.load_dataset(hub_id, hub_config, split=split)
    records = ((f"{hub_id}[{split}] row {i}", row) for i, row in enumerate(rows, start=1))
    return examples_from_records(fmt, records, n)


# ---------------------------------------------------------------- writing


def write_jsonl(examples: Iterable[Example], path: str | os.PathLike[str]) -> None:
    """Write one ``{"question", "steps", "answer"}`` object per line, atomically (tmp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            for example in examples:
                handle.write(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
        os.chmod(handle.name, 0o644)  # NamedTemporaryFile creates 0o600
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
