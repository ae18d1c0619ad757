"""The heap allocator the ``latentrl`` command preloads (``latentrl.allocator``): the choice, the environment
it re-executes with, and the re-execution itself through a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latentrl import allocator
from latentrl.cli import main

LIBM = next((p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6",
                         "/usr/lib64/libm.so.6") if Path(p).is_file()), None)  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables that choose an allocator, plus ``extra``."""
    drop = ("LD_PRELOAD", allocator.ENV, allocator.DONE)
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def fake_library(folder: Path, name: str) -> str:
    """A preloadable shared library named ``name``: a copy of libm (already loaded by Python, so harmless)."""
    if LIBM is None:
        pytest.skip("no libm.so.6 to copy")
    folder.mkdir(parents=True, exist_ok=True)
    return str(shutil.copy(LIBM, folder / name))


def test_find_tcmalloc_takes_the_first_folder_and_name_that_exist(tmp_path):
    assert allocator.find_tcmalloc([tmp_path / "a", tmp_path / "b"]) is None
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "libtcmalloc.so").write_bytes(b"")
    (tmp_path / "b" / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert allocator.find_tcmalloc([tmp_path / "a", tmp_path / "b"]) == str(tmp_path / "b" / "libtcmalloc_minimal.so.4")


def test_library_dirs_start_with_the_environment_and_include_the_multiarch_folder():
    dirs = allocator.library_dirs()
    assert dirs[0] == Path(sys.prefix, "lib") and len(dirs) == len(set(dirs))
    assert Path("/usr/lib") in dirs


def test_the_choice(tmp_path, monkeypatch):
    found = str(tmp_path / "libtcmalloc_minimal.so.4")
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: found)
    assert allocator.chosen_library({}) == found  # auto is the default
    assert allocator.chosen_library({"LATENTRL_ALLOCATOR": "auto"}) == found
    assert allocator.chosen_library({"LATENTRL_ALLOCATOR": "system"}) is None
    assert allocator.chosen_library({}, platform="darwin") is None
    assert allocator.chosen_library({"LD_PRELOAD": "/opt/lib/libjemalloc.so.2"}) is None  # the user's own kept
    lib = fake_library(tmp_path / "mine", "libmymalloc.so")
    assert allocator.chosen_library({"LATENTRL_ALLOCATOR": lib}) == lib
    with pytest.raises(ValueError, match="LATENTRL_ALLOCATOR='/no/such.so': no such library"):
        allocator.chosen_library({"LATENTRL_ALLOCATOR": "/no/such.so"})


def test_preload_env_puts_the_library_first_once():
    env = allocator.preload_env({"PATH": "/bin", "LD_PRELOAD": "/x/liba.so:/x/libb.so"}, "/t/libtcmalloc.so.4")
    assert env["LD_PRELOAD"] == "/t/libtcmalloc.so.4 /x/liba.so /x/libb.so" and env["PATH"] == "/bin"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    assert allocator.preload_env(env, "/t/libtcmalloc.so.4") is None  # done: no second re-execution
    assert allocator.preload_env({"LD_PRELOAD": "/elsewhere/libtcmalloc.so.4"}, "/t/libtcmalloc.so.4") is None
    mine = allocator.preload_env({"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"}, "/t/libtcmalloc.so.4")
    assert mine["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5"  # a setting of the user's wins


@pytest.mark.parametrize("argv", [["--help"], None])
def test_main_never_reexecutes(monkeypatch, argv):
    """Called as a function (tests, notebooks), with or without argv, the CLI runs in the caller's process as
    it is; only the command's entry point re-executes."""
    monkeypatch.setenv("LATENTRL_ALLOCATOR", "/no/such.so")  # would be an error if it were read
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("re-executed"))
    monkeypatch.setattr(sys, "argv", ["latentrl", "--help"])
    with pytest.raises(SystemExit):
        main(argv)


# the command's entry point, after a line saying what LD_PRELOAD is in the process running it
PROBE = "import os; print('PRELOAD=' + os.environ.get('LD_PRELOAD', '-'), flush=True); from latentrl.cli import entry; entry()"


def entry_point(env: dict, tmp_path: Path) -> list[str]:
    """Run the command's entry point under ``env`` (``LD_PRELOAD`` unset unless given): what ``LD_PRELOAD``
    was in each process that ran the code, in order."""
    proc = subprocess.run([sys.executable, "-c", PROBE, "--help"], env=clean_env(**env), capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [line.removeprefix("PRELOAD=") for line in proc.stdout.splitlines() if line.startswith("PRELOAD=")]


def test_the_command_reexecutes_itself_once_with_the_library_preloaded(tmp_path):
    """The second process is the same command line (``sys.orig_argv``: here ``python -c CODE --help``)."""
    lib = fake_library(tmp_path / "lib", "libfakemalloc.so")
    assert entry_point({"LATENTRL_ALLOCATOR": lib}, tmp_path) == ["-", lib]
    assert entry_point({"LATENTRL_ALLOCATOR": lib, "LD_PRELOAD": "/x/liba.so"}, tmp_path) == ["/x/liba.so", f"{lib} /x/liba.so"]


def test_system_a_preloaded_allocator_and_a_done_reexecution_mean_no_reexecution(tmp_path):
    assert entry_point({"LATENTRL_ALLOCATOR": "system"}, tmp_path) == ["-"]
    lib = fake_library(tmp_path / "lib", "libmymalloc.so")
    assert entry_point({"LD_PRELOAD": lib}, tmp_path) == [lib]  # auto keeps the user's allocator
    assert entry_point({"LATENTRL_ALLOCATOR": lib, allocator.DONE: "1"}, tmp_path) == ["-"]  # never twice


@pytest.mark.parametrize(("argv", "expected"), [
    (["python", "/venv/bin/latentrl", "grpo"], True), (["python", "-m", "latentrl.cli", "sft"], True),
    (["python", "-u", "-m", "latentrl.cli"], True), (["python", "-mlatentrl.cli"], True),
    (["python", "-X", "dev", "-W", "ignore", "/venv/bin/latentrl"], True), (["python", "-c", "code", "--help"], True),
    (["python", "-", "--help"], False), (["python", "host.py"], False), (["python", "-m", "pytest"], False),
    (["python"], False),
])  # fmt: skip
def test_only_a_command_line_that_starts_latentrl_is_run_again(argv, expected):
    assert allocator.relaunchable(argv) is expected


def test_a_script_on_stdin_is_not_run_again(tmp_path):
    """``python - --help`` has consumed its stdin: a second process would read nothing and do nothing."""
    lib = fake_library(tmp_path / "lib", "libfakemalloc.so")
    proc = subprocess.run([sys.executable, "-", "--help"], input=PROBE, env=clean_env(LATENTRL_ALLOCATOR=lib),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.count("PRELOAD=") == 1 and "usage: latentrl" in proc.stdout


def test_an_allocator_path_is_made_absolute_and_must_be_preloadable(tmp_path, monkeypatch):
    lib = fake_library(tmp_path / "lib", "libfakemalloc.so")
    monkeypatch.chdir(tmp_path)
    assert allocator.chosen_library({"LATENTRL_ALLOCATOR": "lib/libfakemalloc.so"}) == str(Path(lib).resolve())
    spaced = fake_library(tmp_path / "my libs", "libfakemalloc.so")
    with pytest.raises(ValueError, match="cannot name a path holding a space"):
        allocator.chosen_library({"LATENTRL_ALLOCATOR": spaced})
    assert allocator.find_tcmalloc([tmp_path / "my libs"]) is None
    (tmp_path / "my libs" / "libtcmalloc.so").write_bytes(b"")
    assert allocator.find_tcmalloc([tmp_path / "my libs"]) is None  # LD_PRELOAD would split it


def test_a_bad_setting_is_one_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "latentrl.cli", "--help"], capture_output=True, text=True, timeout=120,
                          env=clean_env(LATENTRL_ALLOCATOR=str(tmp_path / "missing.so")))  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"latentrl: error: LATENTRL_ALLOCATOR='{tmp_path / 'missing.so'}': no such library " \
                                  "(use 'auto', 'system' or the path of a shared library)"


def test_a_run_records_its_allocator(tmp_path):
    """Through the CLI: ``run.json`` names the preloaded library (so a figure's allocator is on record)."""
    lib = fake_library(tmp_path / "lib", "libfakemalloc.so")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "latentrl.cli", "sft", "mode=cot", f"output_dir={out}", "n_layer=1",
                           "n_embd=16", "n_head=2", "num_train_examples=8", "num_train_epochs=1", "save_steps=0",
                           "eval_n=4"],
                          env=clean_env(LATENTRL_ALLOCATOR=lib, HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "run.json").read_text())["allocator"] == lib
