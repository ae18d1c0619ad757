"""Bad inputs through the command line: one ``latentrl: error: ...`` line, exit 2, nothing damaged.

Issue "A run a user can trust": every bad input (data, checkpoint, reward function, flag, output
folder, config, rerun, damaged or crafted checkpoint, diverging run) must reach the user as ONE
line on stderr starting with ``latentrl: error:`` that names the problem, with exit status 2 and no
traceback; nonsense is never silently accepted (exit 0); and nothing already written is changed.

Every case runs ``latentrl.cli.main([...])`` in-process and reads stderr with ``capsys``. Folders
that held content before a case are hashed before and after it (``snapshot``; the ``.lock`` file is
left out: it is the lock's own bookkeeping, rewritten by whoever holds the lock). The tiny SFT runs
the cases need are built once per module (a CoT run with checkpoints, a Coconut run).

``benchmarks/bad_input_catalogue.py`` runs the same catalogue in fresh subprocesses and counts the outcomes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from latentrl.cli import main

from cli_runs import BY_TEXT

TINY = ["n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=64", "per_device_train_batch_size=32",
        "disable_tqdm=true", "task_kwargs={num_steps: 2}"]  # fmt: skip
# the CoT run: 2 steps an epoch, 4 steps, a checkpoint every step, the last 3 kept (checkpoint-2..4)
COT = [*TINY, "mode=cot", "num_train_epochs=2", "save_steps=1", "save_total_limit=3", "max_steps=4", "logging_steps=1"]
COCONUT = [*TINY, "mode=coconut", "start_stage=1", "max_latent_stage=1", "num_train_epochs=1"]
GRPO_TINY = ["num_generations=4", "generation_batch_size=8", "per_device_train_batch_size=8", "max_completion_length=8",
             "max_steps=1", "num_train_examples=16", "disable_tqdm=true", "task_kwargs={num_steps: 2}"]  # fmt: skip


# ---------------------------------------------------------------------------------------------- helpers


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop whatever earlier code printed
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clear_error(rc: int, err: str, *needles, allow_warnings: bool = False) -> str:
    """Exit 2, no traceback, stderr exactly one line ``latentrl: error: ...`` holding every needle
    (a tuple needle: any one of its strings, case-insensitive). With ``allow_warnings`` the lines
    before it may be ``latentrl: warning:`` lines. Returns the error line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err[-3000:]
    assert rc == 2, f"exit code {rc}, stderr: {err[-2000:]}"
    assert lines, "nothing on stderr"
    if allow_warnings:
        assert all(line.startswith("latentrl: warning:") for line in lines[:-1]), err
    else:
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[-1]
    assert line.startswith("latentrl: error:"), line
    for needle in needles:
        options = needle if isinstance(needle, tuple) else (needle,)
        assert any(o.lower() in line.lower() for o in options), f"{options} not named in: {line}"
    return line


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path, skip: tuple[str, ...] = (".lock",)) -> dict[str, str]:
    """Every file (its SHA-256) and folder under ``root`` (or ``root`` itself when it is a file)."""
    root = Path(root)
    if root.is_file():
        return {".": sha(root)}
    return {str(p.relative_to(root)): ("<dir>" if p.is_dir() else sha(p))
            for p in sorted(root.rglob("*")) if p.name not in skip}  # fmt: skip


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    from latentrl.models.build import quiet_hf

    with quiet_hf():
        return AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()


def checkpoint_dirs(out: Path) -> list[Path]:
    return sorted(p for p in Path(out).iterdir() if p.is_dir() and (p.name.startswith("checkpoint-") or
                                                                     p.name in ("final", "best") or p.name.startswith("stage-")))  # fmt: skip


def assert_finite_checkpoints(out: Path) -> None:
    for d in checkpoint_dirs(out):
        for name, t in state_dict(d).items():
            assert torch.isfinite(t).all(), f"{d}: {name} is not finite"


def write_manifest(directory: Path) -> None:
    """Regenerate ``manifest.json`` the way ``latentrl.models.checkpoint._write_manifest`` writes it
    (the old manifest removed first: the writer lists every file of the folder)."""
    from latentrl.models.checkpoint import MANIFEST, _write_manifest

    (directory / MANIFEST).unlink()
    _write_manifest(directory)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished CoT run (checkpoint-2..4, final/, log.jsonl) and a finished Coconut run."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    assert main(["sft", f"output_dir={tmp / 'cot'}", *COT]) == 0
    assert main(["sft", f"output_dir={tmp / 'coconut'}", *COCONUT]) == 0
    return SimpleNamespace(tmp=tmp, cot=tmp / "cot", coconut=tmp / "coconut", coconut_final=tmp / "coconut" / "final")


@pytest.fixture
def eval_out(tmp_path) -> Path:
    """An eval output folder that already holds results (must survive a failed eval)."""
    out = tmp_path / "eval_out"
    out.mkdir()
    (out / "metrics.json").write_text('{"accuracy": 0.5, "keep": true}\n')
    (out / "predictions.jsonl").write_text('{"question": "1+1", "prediction": "2"}\n')
    return out


def long_question_file(path: Path, chars: int = 400) -> Path:
    path.write_text(json.dumps({"question": "1+" * (chars // 2) + "1", "steps": ["1+1=2"], "answer": "2"}) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- a. data longer than the context


def test_a_sft_question_longer_than_context(tmp_path, capsys):
    data = long_question_file(tmp_path / "long.jsonl")
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "sft", f"output_dir={out}", *TINY, "mode=cot", "max_length=64", "task=jsonl",
                     f"data_path={data}", "num_train_examples=null", "task_kwargs={}")  # fmt: skip
    assert_clear_error(rc, err, "context", "64", "example 0", "long.jsonl")
    assert not (out / "final").exists()


def test_a_eval_question_longer_than_context(runs, tmp_path, eval_out, capsys):
    data = long_question_file(tmp_path / "long.jsonl")
    before = snapshot(eval_out)
    rc, _, err = cli(capsys, "eval", "--checkpoint", runs.coconut_final, "--data", data, "--out", eval_out)
    assert_clear_error(rc, err, "long.jsonl", "context", "example 0")
    assert snapshot(eval_out) == before


# ---------------------------------------------------------------------------------------------- b. latentrl.json


def _token_id(checkpoint: Path, token: str) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint).convert_tokens_to_ids(token)


@pytest.mark.parametrize(
    "case",
    ["no_thinking_mode", "telepathy", "soft_top_k_zero", "no_latent_token_id", "null_latent_token_id", "latent_id_out_of_range",
     "latent_id_ordinary_token", "num_latents_negative"],
)  # fmt: skip
def test_b_bad_latentrl_json(runs, tmp_path, eval_out, capsys, case):
    ckpt = copy_tree(runs.coconut_final, tmp_path / "ckpt")
    meta_path = ckpt / "latentrl.json"
    meta = json.loads(meta_path.read_text())
    assert meta["thinking_mode"] == "coconut"
    needles: tuple = ()
    if case == "no_thinking_mode":
        del meta["thinking_mode"]
        needles = ("thinking_mode", "missing")
    elif case == "telepathy":
        meta["thinking_mode"] = "telepathy"
        needles = ("thinking_mode", "telepathy")
    elif case == "soft_top_k_zero":
        meta["thinking_mode"], meta["soft_top_k"] = "soft", 0
        needles = ("soft_top_k", "0")
    elif case == "no_latent_token_id":
        del meta["latent_token_id"]
        needles = ("latent_token_id",)
    elif case == "null_latent_token_id":
        meta["latent_token_id"] = None
        needles = ("latent_token_id",)
    elif case == "latent_id_out_of_range":
        meta["latent_token_id"] = 10**6
        needles = ("latent_token_id", "1000000")
    elif case == "latent_id_ordinary_token":
        meta["latent_token_id"] = _token_id(ckpt, "a")
        needles = ("latent_token_id", str(meta["latent_token_id"]))
    elif case == "num_latents_negative":
        meta["num_latents"] = -1
        needles = ("num_latents", "-1")
    meta_path.write_text(json.dumps(meta, indent=2))
    before, before_out = snapshot(ckpt), snapshot(eval_out)
    rc, _, err = cli(capsys, "eval", "--checkpoint", ckpt, "--task", "arith", "--n", "2", "--out", eval_out)
    assert_clear_error(rc, err, "latentrl.json", *needles)
    assert snapshot(ckpt) == before and snapshot(eval_out) == before_out


def test_b_control_the_undamaged_copy_evaluates(runs, tmp_path, capsys):
    """The copies above fail because of the edit alone: the untouched copy evaluates."""
    ckpt = copy_tree(runs.coconut_final, tmp_path / "ckpt")
    rc, _, err = cli(capsys, "eval", "--checkpoint", ckpt, "--task", "arith", "--n", "2", "--max-new-tokens", "8",
                     "--out", tmp_path / "e", "task_kwargs={num_steps: 2}")  # fmt: skip
    assert rc == 0, err
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n"] == 2


# ---------------------------------------------------------------------------------------------- c. damaged weights


@pytest.mark.parametrize("damage", ["truncated", "random_bytes"])
def test_c_damaged_safetensors(runs, tmp_path, eval_out, capsys, damage):
    ckpt = copy_tree(runs.coconut_final, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    before = snapshot(eval_out)
    rc, _, err = cli(capsys, "eval", "--checkpoint", ckpt, "--task", "arith", "--n", "2", "--out", eval_out)
    assert_clear_error(rc, err, "model.safetensors")
    assert snapshot(eval_out) == before


# ---------------------------------------------------------------------------------------------- d. reward functions

REWARDS = {
    # name: (function body, words the error must hold besides the function's name)
    "raises": ("raise RuntimeError('reward service down')", ("raise",)),
    "returns_none": ("return None", ("None",)),
    "wrong_length": ("return [0.0] * (len(completions) - 1)", ("7", "8")),
    "strings": ("return ['good'] * len(completions)", ("str",)),
    "numeric_strings": ("return ['1.0'] * len(completions)", ("str",)),
    "tensor_2d": ("import torch\n    return torch.zeros(len(completions), 2)", ("2-D",)),
    "inf": ("return [float('inf')] * len(completions)", (("inf", "finite"),)),
    "huge": ("return [1e30] * len(completions)", (("1e+30", "magnitude"),)),
}


def grpo_args(runs, out: Path, *extra: str) -> list[str]:
    return ["grpo", f"output_dir={out}", f"model_name_or_path={runs.coconut_final}", *GRPO_TINY, *extra]


@pytest.mark.parametrize("case", list(REWARDS))
def test_d_bad_reward_function(runs, tmp_path, monkeypatch, capsys, case):
    body, needles = REWARDS[case]
    module, func = f"bad_reward_{case}", f"reward_{case}"
    (tmp_path / f"{module}.py").write_text(f"def {func}(prompts, completions, **kwargs):\n    {body}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before_sft = snapshot(runs.coconut)
    out = tmp_path / "grpo"
    rc, _, err = cli(capsys, *grpo_args(runs, out, f"reward_funcs=[{module}:{func}]", "save_steps=1"))
    assert_clear_error(rc, err, func, *needles)
    assert not out.exists() or not checkpoint_dirs(out)
    assert snapshot(runs.coconut) == before_sft


@pytest.mark.parametrize("spec", ["no_such_reward_module:fn", "latentrl.rewards:no_such_function"])
def test_d_reward_that_cannot_be_loaded_fails_before_any_model_loads(runs, tmp_path, capsys, spec):
    out = tmp_path / "grpo"
    rc, _, err = cli(capsys, *grpo_args(runs, out, f"reward_funcs=[{spec}]"))
    assert_clear_error(rc, err, "reward_funcs", spec.split(":")[0] if "no_such_reward" in spec else "no_such_function")
    assert not out.exists() or not checkpoint_dirs(out)


IMPORT_FAILURES = {
    # extra cases, beyond the brief's list: the module exists but importing it fails, or the name is no function
    "syntax_error": ("def reward(prompts, completions, **kw)\n    return [0.0]\n", "SyntaxError"),
    "raises_on_import": ("raise RuntimeError('needs a GPU')\ndef reward(prompts, completions, **kw):\n    return [0.0]\n",
                         "needs a GPU"),
    "not_callable": ("reward = 3\n", "not a function"),
}


@pytest.mark.parametrize("case", ["syntax_error", "raises_on_import", "not_callable"])
def test_d_reward_module_that_fails_to_import(runs, tmp_path, monkeypatch, capsys, case):
    source, needle = IMPORT_FAILURES[case]
    module = f"broken_reward_{case}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "grpo"
    rc, _, err = cli(capsys, *grpo_args(runs, out, f"reward_funcs=[{module}:reward]"))
    assert_clear_error(rc, err, module, needle)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- e. eval flags


@pytest.mark.parametrize(
    "flag,value,key",
    [("--n", "0", "n"), ("--samples", "-1", "samples"), ("--batch-size", "0", "batch_size"),
     ("--num-latents", "-1", "num_latents"), ("--temperature", "-1", "temperature")],
)  # fmt: skip
def test_e_eval_flags_out_of_range(runs, eval_out, capsys, flag, value, key):
    before = snapshot(eval_out)
    rc, _, err = cli(capsys, "eval", "--checkpoint", runs.coconut_final, "--task", "arith", flag, value, "--out", eval_out)
    assert_clear_error(rc, err, f"'{key}'", value)
    assert snapshot(eval_out) == before


# ---------------------------------------------------------------------------------------------- f. output folders


def _output_args(command: str, runs, target: Path) -> list:
    if command == "sft":
        return ["sft", f"output_dir={target}", *COT]
    if command == "grpo":
        return grpo_args(runs, target)
    return ["eval", "--checkpoint", runs.coconut_final, "--task", "arith", "--n", "2", "--out", target]


@pytest.mark.parametrize("command", ["sft", "grpo", "eval"])
@pytest.mark.parametrize("where", ["is_a_file", "under_a_file"])
def test_f_output_folder_that_is_or_is_under_a_file(runs, tmp_path, capsys, command, where):
    blocker = tmp_path / "results.txt"
    blocker.write_text("precious\n")
    target = blocker if where == "is_a_file" else blocker / "sub"
    rc, _, err = cli(capsys, *_output_args(command, runs, target))
    assert_clear_error(rc, err, str(target), "file")
    assert blocker.read_text() == "precious\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write in a read-only folder")
@pytest.mark.parametrize("command", ["sft", "grpo", "eval"])
def test_f_read_only_output_folder(runs, tmp_path, capsys, command):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = cli(capsys, *_output_args(command, runs, ro / "out"))
        assert_clear_error(rc, err, str(ro))
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------------------------------- g. nothing to train


@pytest.mark.parametrize("override,key", [("max_steps=0", "max_steps"), ("num_train_examples=0", "num_train_examples"),
                                          ("num_train_epochs=0", "num_train_epochs")])  # fmt: skip
def test_g_sft_that_would_train_nothing(tmp_path, capsys, override, key):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "sft", f"output_dir={out}", *TINY, override)
    assert_clear_error(rc, err, key)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- h. config errors


@pytest.mark.parametrize(
    "command,override,needles",
    [("sft", "learnin_rate=1e-3", ("learnin_rate", "Did you mean 'learning_rate'")),
     ("grpo", "num_generations=1", ("num_generations", "2")),
     ("grpo", "temperature=-1", ("temperature", "-1")),
     ("grpo", "top_p=0", ("top_p",)),
     ("grpo", "top_p=1.5", ("top_p", "1.5")),
     ("grpo", "dropout_p=1", ("dropout_p",)),
     ("sft", "per_device_train_batch_size=0", ("per_device_train_batch_size",)),
     ("sft", "logging_steps=0", ("logging_steps",)),
     ("grpo", "beta=-1", ("beta", "-1")),
     ("grpo", "epsilon=0", ("epsilon",)),
     ("grpo", "loss_type=ppo", ("loss_type", "ppo"))],
)  # fmt: skip
def test_h_config_errors(tmp_path, capsys, command, override, needles):
    out = tmp_path / "run"
    extra = ["model_name_or_path=some/sft"] if command == "grpo" else []
    rc, _, err = cli(capsys, command, f"output_dir={out}", *extra, override)
    assert_clear_error(rc, err, *needles)
    assert not out.exists()


def test_h_typo_in_sweep_grpo_block_fails_before_training(tmp_path, capsys):
    out = tmp_path / "sweep"
    config = tmp_path / "sweep.yaml"
    config.write_text(f"out: {out}\nsft_checkpoints: [x]\ngrpo: {{learnin_rate: 1e-4}}\n")
    rc, _, err = cli(capsys, "sweep", "--config", config)
    assert_clear_error(rc, err, "learnin_rate", "learning_rate", "grpo")
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------------------------------- i. reruns in a run folder


def test_i_rerun_with_another_mode_is_refused(runs, tmp_path, capsys):
    out = copy_tree(runs.cot, tmp_path / "cot")
    before = snapshot(out)
    rc, _, err = cli(capsys, "sft", f"output_dir={out}", *COT, "mode=coconut")
    assert_clear_error(rc, err, str(out), "mode")
    assert snapshot(out) == before


def test_i_rerun_with_another_learning_rate_is_refused(runs, tmp_path, capsys):
    out = copy_tree(runs.cot, tmp_path / "cot")
    before = snapshot(out)
    rc, _, err = cli(capsys, "sft", f"output_dir={out}", *COT, "learning_rate=5e-4")
    assert_clear_error(rc, err, str(out), "learning_rate")
    assert snapshot(out) == before


def test_i_identical_rerun_is_a_no_op(runs, tmp_path, capsys):
    out = copy_tree(runs.cot, tmp_path / "cot")
    before = snapshot(out)
    rc, stdout, err = cli(capsys, "sft", f"output_dir={out}", *COT)
    assert rc == 0, err
    assert "already complete" in stdout
    assert snapshot(out) == before


def test_i_checkpoint_of_another_run_is_refused(runs, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["sft", f"output_dir={other}", *COT, "seed=1"]) == 0
    out = copy_tree(runs.cot, tmp_path / "cot")
    shutil.copytree(other / "checkpoint-4", out / "checkpoint-5")
    before = snapshot(out)
    rc, _, err = cli(capsys, "sft", f"output_dir={out}", *COT)
    assert_clear_error(rc, err, "checkpoint-5", "another run")
    assert snapshot(out) == before


def test_i_locked_folder_is_refused(runs, tmp_path, capsys):
    out = copy_tree(runs.cot, tmp_path / "cot")
    before = snapshot(out, skip=())
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, _, err = cli(capsys, "sft", f"output_dir={out}", *COT)
    assert_clear_error(rc, err, str(out), "in use")
    assert snapshot(out, skip=()) == before  # the refused process does not even touch the lock file


# ---------------------------------------------------------------------------------------------- j. damaged newest checkpoint


def _killed_run(runs, tmp_path: Path) -> Path:
    """The CoT run as a crash would leave it: no final/ (run.json, config.yaml and log untouched)."""
    out = copy_tree(runs.cot, tmp_path / "cot")
    shutil.rmtree(out / "final")
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    return out


def _damage(checkpoint: Path, how: str) -> None:
    if how == "weights":
        weights = checkpoint / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    else:
        (checkpoint / "trainer_state.json").unlink()


@pytest.mark.parametrize("how", ["weights", "trainer_state"])
def test_j_damaged_newest_checkpoint_is_skipped_and_the_run_ends_the_same(runs, tmp_path, capsys, how):
    out = _killed_run(runs, tmp_path)
    _damage(out / "checkpoint-4", how)
    rc, _, err = cli(capsys, "sft", f"output_dir={out}", *COT, "resume_from_checkpoint=true", "max_steps=4")
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("latentrl: warning:")]
    assert any("checkpoint-4" in line and "damaged" in line for line in warnings), err
    assert "Traceback" not in err
    a, b = state_dict(runs.cot / "final"), state_dict(out / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_j_every_checkpoint_damaged_is_refused_and_nothing_deleted(runs, tmp_path, capsys):
    out = _killed_run(runs, tmp_path)
    for checkpoint in checkpoint_dirs(out):
        _damage(checkpoint, "weights")
    before = snapshot(out)
    rc, _, err = cli(capsys, "sft", f"output_dir={out}", *COT, "resume_from_checkpoint=true", "max_steps=4")
    # one warning per damaged checkpoint, then the one error line
    line = assert_clear_error(rc, err, "damaged", str(out), allow_warnings=True)
    assert "every checkpoint" in line
    for name in ("checkpoint-2", "checkpoint-3", "checkpoint-4"):
        assert name in err
    assert snapshot(out) == before


# ---------------------------------------------------------------------------------------------- k. crafted optimizer.pt


class _WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_run(runs, tmp_path: Path) -> tuple[Path, Path]:
    """The killed CoT run whose newest checkpoint holds a crafted optimizer.pt, its manifest regenerated."""
    out = _killed_run(runs, tmp_path)
    marker = tmp_path / "MARKER"
    newest = out / "checkpoint-4"
    torch.save({"optimizer": _WritesMarker(str(marker)), "scheduler": {}, "rng": []}, newest / "optimizer.pt")
    write_manifest(newest)
    return out, marker


def test_k_crafted_optimizer_state_never_runs(runs, tmp_path, capsys):
    from latentrl.models.checkpoint import verify_checkpoint

    out, marker = _crafted_run(runs, tmp_path)
    assert verify_checkpoint(out / "checkpoint-4") is None  # the manifest matches: only the unpickling can catch it
    # the payload is real: an unsafe load of a copy creates the marker
    shutil.copy(out / "checkpoint-4" / "optimizer.pt", tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()
    before = snapshot(out)
    rc, _, err = cli(capsys, "sft", f"output_dir={out}", *COT, "resume_from_checkpoint=true", "max_steps=4")
    assert not marker.exists(), "the crafted optimizer.pt ran code"
    if rc == 0:  # skipped with a warning, resumed from checkpoint-3
        assert any(line.startswith("latentrl: warning:") and "checkpoint-4" in line for line in err.splitlines()), err
    else:
        assert_clear_error(rc, err, "optimizer.pt")
        assert snapshot(out) == before


def test_k_crafted_optimizer_error_names_what_was_refused(runs, tmp_path, capsys):
    out, marker = _crafted_run(runs, tmp_path)
    rc, _, err = cli(capsys, "sft", f"output_dir={out}", *COT, "resume_from_checkpoint=true", "max_steps=4")
    assert not marker.exists()
    line = assert_clear_error(rc, err, "optimizer.pt", "io.open")
    assert "\x1b" not in line, "terminal escape sequences in the error line"
    assert "can still be loaded" not in line, "the error line advises how to load the crafted file"


# ---------------------------------------------------------------------------------------------- l. diverging runs


@pytest.mark.parametrize("clipping", [["max_grad_norm=0"], []], ids=["no_clipping", "clipping"])
def test_l_sft_that_diverges_stops_with_finite_checkpoints(tmp_path, capsys, clipping):
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "sft", f"output_dir={out}", *TINY, "mode=cot", "num_train_epochs=3", "save_steps=1",
                     "learning_rate=1e6", *clipping)  # fmt: skip
    assert_clear_error(rc, err, ("nan", "inf"), "step")
    assert not (out / "final").exists()
    assert_finite_checkpoints(out)


def test_l_grpo_that_diverges_stops_with_finite_checkpoints(runs, tmp_path, capsys):
    # rewards that vary within a group (an untrained policy scores 0 on answer_match: no gradient at all)
    out = tmp_path / "grpo"
    before_sft = snapshot(runs.coconut)
    rc, _, err = cli(capsys, *grpo_args(runs, out, "max_steps=3", "save_steps=1", "learning_rate=1e6", "max_grad_norm=0",
                                        BY_TEXT))  # fmt: skip
    try:
        assert_clear_error(rc, err, ("nan", "inf"), "step")
        assert not (out / "final").exists()
    finally:
        assert_finite_checkpoints(out)
        assert snapshot(runs.coconut) == before_sft


# extra cases, beyond the brief's list: a checkpoint with finite weights whose forward is NaN (what the
# diverging GRPO run above leaves in checkpoint-1) evaluated greedily and with samples



def _diverged_checkpoint(runs, tmp_path: Path) -> Path:
    """The Coconut checkpoint with every weight moved by +-1e6 (finite, as after one Adam step at lr=1e6)."""
    from safetensors.torch import load_file, save_file

    ckpt = copy_tree(runs.coconut_final, tmp_path / "diverged")
    g = torch.Generator().manual_seed(0)
    tensors = load_file(ckpt / "model.safetensors")
    tensors = {k: (v + 1e6 * torch.randn(v.shape, generator=g).sign()).contiguous() for k, v in tensors.items()}
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    return ckpt


@pytest.mark.parametrize("samples", ["1", "4"])
def test_eval_of_a_checkpoint_whose_logits_are_nan(runs, tmp_path, eval_out, capsys, samples):
    ckpt = _diverged_checkpoint(runs, tmp_path)
    before = snapshot(eval_out)
    rc, _, err = cli(capsys, "eval", "--checkpoint", ckpt, "--task", "arith", "--n", "2", "--samples", samples,
                     "--max-new-tokens", "8", "--out", eval_out, "task_kwargs={num_steps: 2}")  # fmt: skip
    assert_clear_error(rc, err, ("nan", "inf"))
    assert snapshot(eval_out) == before
