"""Promises about the code itself: short functions, trainers that read as their numbered steps, help
text without raw markup, and only dependencies the package really imports."""

import ast
import re
import tomllib
from pathlib import Path

import pytest

from latentrl.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "latentrl"
IMPORT_NAMES = {"pyyaml": "yaml", "math-verify": "math_verify"}


def function_lengths() -> dict[str, int]:
    lengths = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths[f"{path.relative_to(SRC)}:{node.name}"] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_function_over_80_lines_and_trainers_at_most_60():
    lengths = function_lengths()
    assert {k: n for k, n in lengths.items() if n > 80} == {}
    assert lengths["train/sft.py:train_sft"] <= 60 and lengths["train/grpo.py:train_grpo"] <= 60


@pytest.mark.parametrize("command", ["sft", "grpo", "eval", "sweep", "demo"])
def test_help_has_no_raw_markup(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "config keys:" in text and "``" not in text and ":class:" not in text


def test_every_declared_dependency_is_imported():
    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~\[ ]", d)[0].lower() for d in project["dependencies"]]
    source = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    unused = [n for n in names if not re.search(rf"^\s*(import|from) {IMPORT_NAMES.get(n, n)}\b", source, re.M)]
    assert unused == []
