"""Run the bad-input catalogue through the real command line, each case in a fresh process, and classify it.

    python benchmarks/bad_input_catalogue.py [--out benchmarks/results/bad_inputs.json] [--only SUBSTRING] [--keep]

Issue "A run a user can trust": every bad input must reach the user as one ``latentrl: error: ...``
line on stderr with exit status 2 and no traceback, nonsense must never be accepted (exit 0), and
nothing already written may be damaged. The cases are those of ``tests/test_bad_inputs_cli.py``
(a. data longer than the context ... l. diverging runs, plus the extras found there), written here as
data: each case is a setup (files it writes in its own temporary folder) and a ``latentrl`` argv,
run as ``python -m latentrl.cli ARGV`` with ``HF_HUB_OFFLINE=1`` in that folder.

Each outcome is one of:

- ``clear``: exit 2, the last stderr line starts with ``latentrl: error:``, no ``Traceback`` on stderr;
- ``traceback``: ``Traceback`` on stderr;
- ``silent_accept``: exit 0 where an error was expected (what it wrote over is listed in ``problem``);
- ``damage``: files that existed before the case changed or vanished (or a file that must never be
  written was: a code-execution marker, a checkpoint holding NaN/inf) — this wins over ``clear``,
  ``traceback`` and the rest;
- ``ok``: a case where success is the right answer (an identical rerun, a resume past a damaged
  checkpoint) succeeded and its checks held; ``wrong_result``: it exited 0 but a check failed;
- ``other``: anything else (another exit status, an error line in another format).

Each row also says whether the error line names what the test asserts it names (``names_problem``)
and how many lines stderr had. Before the cases, two tiny SFT runs are trained (a CoT run with
checkpoint-2..4 and a Coconut run, a few seconds each) as material. The whole catalogue takes a few
minutes on 2 CPU cores; it writes the rows, the totals and the environment as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TINY = ["n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=64", "per_device_train_batch_size=32",
        "disable_tqdm=true", "task_kwargs={num_steps: 2}"]  # fmt: skip
COT = [*TINY, "mode=cot", "num_train_epochs=2", "save_steps=1", "save_total_limit=3", "max_steps=4", "logging_steps=1"]
COCONUT = [*TINY, "mode=coconut", "start_stage=1", "max_latent_stage=1", "num_train_epochs=1"]
GRPO_TINY = ["num_generations=4", "generation_batch_size=8", "per_device_train_batch_size=8", "max_completion_length=8",
             "max_steps=1", "num_train_examples=16", "disable_tqdm=true", "task_kwargs={num_steps: 2}"]  # fmt: skip
CLASSES = ("clear", "traceback", "silent_accept", "damage", "ok", "wrong_result", "other")


# ---------------------------------------------------------------------------------------------- files


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path, skip: tuple[str, ...] = (".lock",)) -> dict[str, str]:
    """Every file (SHA-256) and folder under ``root`` (``root`` itself when a file; ``{}`` when absent)."""
    root = Path(root)
    if root.is_file():
        return {".": sha(root)}
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): ("<dir>" if p.is_dir() else sha(p))
            for p in sorted(root.rglob("*")) if p.name not in skip}  # fmt: skip


def checkpoint_dirs(out: Path) -> list[Path]:
    if not Path(out).is_dir():
        return []
    return sorted(p for p in Path(out).iterdir() if p.is_dir() and (p.name.startswith(("checkpoint-", "stage-"))
                                                                     or p.name in ("final", "best")))  # fmt: skip


def non_finite_checkpoints(out: Path) -> list[str]:
    import torch
    from safetensors.torch import load_file

    bad = []
    for d in checkpoint_dirs(out):
        for f in d.glob("*.safetensors"):
            if any(not torch.isfinite(t).all() for t in load_file(f).values()):
                bad.append(str(d))
    return bad


def write_manifest(directory: Path) -> None:
    """Regenerate manifest.json as latentrl.models.checkpoint._write_manifest does (old one removed first)."""
    entries = {}
    (directory / "manifest.json").unlink()
    for p in sorted(q for q in directory.rglob("*") if q.is_file()):
        entries[str(p.relative_to(directory))] = {"bytes": p.stat().st_size, "sha256": sha(p)}
    (directory / "manifest.json").write_text(json.dumps(entries, indent=1) + "\n")


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------------------------- cases


@dataclass
class Ctx:
    """The material every case may copy: two finished SFT runs (never modified by a case)."""

    cot: Path  # CoT run: checkpoint-2..4, final/, log.jsonl
    coconut: Path  # Coconut run: final/
    other: Path  # a second CoT run (seed 1): another run's checkpoints

    @property
    def coconut_final(self) -> Path:
        return self.coconut / "final"


@dataclass
class Prepared:
    argv: list[str]
    expect: str = "error"  # "error", "success", or "error_or_warning" (a clear error or a skip with a warning)
    needles: list = field(default_factory=list)  # what the error line must name (a tuple: any of them)
    protect: list[Path] = field(default_factory=list)  # must be byte-for-byte unchanged
    protect_if_error: list[Path] = field(default_factory=list)  # ... when the command fails
    must_not_exist: list[Path] = field(default_factory=list)  # writing one is damage (code ran, a checkpoint)
    no_checkpoints_in: list[Path] = field(default_factory=list)  # a failed run must not leave checkpoints
    finite_checkpoints_in: Path | None = None  # every checkpoint there must hold only finite weights
    check: Callable[[int, str, str], str | None] | None = None  # success checks: the problem, or None
    lock: Path | None = None  # held (flock) by this script while the command runs
    pythonpath: list[Path] = field(default_factory=list)
    skip: str | None = None  # why the case is not run here


CASES: list[tuple[str, Callable[[Ctx, Path], Prepared]]] = []


def case(name: str):
    def register(fn):
        CASES.append((name, fn))
        return fn

    return register


def eval_out(tmp: Path) -> Path:
    out = tmp / "eval_out"
    out.mkdir()
    (out / "metrics.json").write_text('{"accuracy": 0.5, "keep": true}\n')
    (out / "predictions.jsonl").write_text('{"question": "1+1", "prediction": "2"}\n')
    return out


def long_question(tmp: Path) -> Path:
    path = tmp / "long.jsonl"
    path.write_text(json.dumps({"question": "1+" * 200 + "1", "steps": ["1+1=2"], "answer": "2"}) + "\n")
    return path


def grpo(ctx: Ctx, out: Path, *extra: str) -> list[str]:
    return ["grpo", f"output_dir={out}", f"model_name_or_path={ctx.coconut_final}", *GRPO_TINY, *extra]


# a. data longer than the context
@case("a/sft_question_longer_than_context")
def _(ctx, tmp):
    data, out = long_question(tmp), tmp / "run"
    return Prepared(["sft", f"output_dir={out}", *TINY, "mode=cot", "max_length=64", "task=jsonl", f"data_path={data}",
                     "num_train_examples=null", "task_kwargs={}"], needles=["context", "example 0", "long.jsonl"],
                    no_checkpoints_in=[out])  # fmt: skip


@case("a/eval_question_longer_than_context")
def _(ctx, tmp):
    out = eval_out(tmp)
    return Prepared(["eval", "--checkpoint", str(ctx.coconut_final), "--data", str(long_question(tmp)), "--out", str(out)],
                    needles=["context", "long.jsonl"], protect=[out])  # fmt: skip


# b. latentrl.json
def _soft_is_implemented() -> bool:
    from latentrl.models.layout import IMPLEMENTED_MODES

    return "soft" in IMPLEMENTED_MODES


def _latentrl_json_case(edit: Callable[[dict, Path], None], needles: list, valid_when: Callable[[], bool] | None = None):
    def setup(ctx, tmp):
        ckpt = tmp / "ckpt"
        shutil.copytree(ctx.coconut_final, ckpt)
        meta = json.loads((ckpt / "latentrl.json").read_text())
        edit(meta, ckpt)
        (ckpt / "latentrl.json").write_text(json.dumps(meta, indent=2))
        out = eval_out(tmp)
        if valid_when is not None and valid_when():  # the edit is no longer an error (e.g. soft got implemented)
            return Prepared(["eval", "--checkpoint", str(ckpt), "--task", "arith", "--n", "2", "--max-new-tokens", "8",
                             "--out", str(tmp / "e"), "task_kwargs={num_steps: 2}"], expect="success", protect=[ckpt])
        return Prepared(["eval", "--checkpoint", str(ckpt), "--task", "arith", "--n", "2", "--out", str(out)],
                        needles=["latentrl.json", *needles], protect=[out, ckpt])  # fmt: skip

    return setup


def _token_id(ckpt: Path, token: str) -> int:
    return json.loads((ckpt / "tokenizer.json").read_text())["model"]["vocab"][token]


for _name, _edit, _needles, *_valid in [
    ("no_thinking_mode", lambda m, c: m.pop("thinking_mode"), ["thinking_mode"]),
    ("thinking_mode_telepathy", lambda m, c: m.update(thinking_mode="telepathy"), ["telepathy"]),
    ("thinking_mode_soft", lambda m, c: m.update(thinking_mode="soft"), ["soft", "not implemented"], _soft_is_implemented),
    ("no_latent_token_id", lambda m, c: m.pop("latent_token_id"), ["latent_token_id"]),
    ("latent_token_id_out_of_range", lambda m, c: m.update(latent_token_id=10**6), ["latent_token_id", "1000000"]),
    ("latent_token_id_of_ordinary_token", lambda m, c: m.update(latent_token_id=_token_id(c, "a")), ["latent_token_id"]),
    ("num_latents_negative", lambda m, c: m.update(num_latents=-1), ["num_latents"]),
]:
    case(f"b/latentrl_json_{_name}")(_latentrl_json_case(_edit, _needles, *_valid))


@case("b/control_undamaged_copy_evaluates")
def _(ctx, tmp):
    ckpt = tmp / "ckpt"
    shutil.copytree(ctx.coconut_final, ckpt)
    return Prepared(["eval", "--checkpoint", str(ckpt), "--task", "arith", "--n", "2", "--max-new-tokens", "8", "--out",
                     str(tmp / "e"), "task_kwargs={num_steps: 2}"], expect="success", protect=[ckpt],
                    check=lambda rc, out, err: None if (tmp / "e" / "metrics.json").exists() else "no metrics.json")  # fmt: skip


# c. damaged weights
for _how in ("truncated", "random_bytes"):

    @case(f"c/safetensors_{_how}")
    def _(ctx, tmp, how=_how):
        ckpt = tmp / "ckpt"
        shutil.copytree(ctx.coconut_final, ckpt)
        w = ckpt / "model.safetensors"
        data = w.read_bytes()
        w.write_bytes(data[: len(data) // 2] if how == "truncated" else os.urandom(len(data)))
        out = eval_out(tmp)
        return Prepared(["eval", "--checkpoint", str(ckpt), "--task", "arith", "--n", "2", "--out", str(out)],
                        needles=["model.safetensors"], protect=[out])  # fmt: skip


# d. reward functions
REWARDS = {
    "raises": ("raise RuntimeError('reward service down')", ["raise"]),
    "returns_none": ("return None", ["None"]),
    "wrong_length": ("return [0.0] * (len(completions) - 1)", ["7", "8"]),
    "strings": ("return ['good'] * len(completions)", ["str"]),
    "numeric_strings": ("return ['1.0'] * len(completions)", ["str"]),
    "tensor_2d": ("import torch\n    return torch.zeros(len(completions), 2)", ["2-D"]),
    "inf": ("return [float('inf')] * len(completions)", [("inf", "finite")]),
    "huge_1e30": ("return [1e30] * len(completions)", [("1e+30", "magnitude")]),
}
for _name, (_body, _needles) in REWARDS.items():

    @case(f"d/reward_{_name}")
    def _(ctx, tmp, name=_name, body=_body, needles=_needles):
        module, func = f"bad_reward_{name}", f"reward_{name}"
        (tmp / f"{module}.py").write_text(f"def {func}(prompts, completions, **kwargs):\n    {body}\n")
        out = tmp / "grpo"
        return Prepared(grpo(ctx, out, f"reward_funcs=[{module}:{func}]", "save_steps=1"), needles=[func, *needles],
                        pythonpath=[tmp], no_checkpoints_in=[out], protect=[ctx.coconut])  # fmt: skip


for _spec, _needle in [("no_such_reward_module:fn", "no_such_reward_module"),
                       ("latentrl.rewards:no_such_function", "no_such_function")]:  # fmt: skip

    @case(f"d/reward_not_loadable_{_needle}")
    def _(ctx, tmp, spec=_spec, needle=_needle):
        out = tmp / "grpo"
        return Prepared(grpo(ctx, out, f"reward_funcs=[{spec}]"), needles=["reward_funcs", needle], no_checkpoints_in=[out])


IMPORT_FAILURES = {  # extra: the module exists but importing it fails, or the name is no function
    "syntax_error": ("def reward(prompts, completions, **kw)\n    return [0.0]\n", "SyntaxError"),
    "raises_on_import": ("raise RuntimeError('needs a GPU')\ndef reward(prompts, completions, **kw):\n    return [0.0]\n",
                         "needs a GPU"),
    "not_callable": ("reward = 3\n", "not a function"),
}
for _name, (_source, _needle) in IMPORT_FAILURES.items():

    @case(f"d/reward_module_{_name}")
    def _(ctx, tmp, name=_name, source=_source, needle=_needle):
        module = f"broken_reward_{name}"
        (tmp / f"{module}.py").write_text(source)
        out = tmp / "grpo"
        return Prepared(grpo(ctx, out, f"reward_funcs=[{module}:reward]"), needles=[module, needle], pythonpath=[tmp],
                        no_checkpoints_in=[out])  # fmt: skip


# e. eval flags
for _flag, _value, _key in [("--n", "0", "n"), ("--samples", "-1", "samples"), ("--batch-size", "0", "batch_size"),
                            ("--num-latents", "-1", "num_latents"), ("--temperature", "-1", "temperature")]:  # fmt: skip

    @case(f"e/eval_{_key}_{_value}")
    def _(ctx, tmp, flag=_flag, value=_value, key=_key):
        out = eval_out(tmp)
        return Prepared(["eval", "--checkpoint", str(ctx.coconut_final), "--task", "arith", flag, value, "--out", str(out)],
                        needles=[f"'{key}'", value], protect=[out])  # fmt: skip


# f. output folders
def _output_argv(command: str, ctx: Ctx, target: Path) -> list[str]:
    if command == "sft":
        return ["sft", f"output_dir={target}", *COT]
    if command == "grpo":
        return grpo(ctx, target)
    return ["eval", "--checkpoint", str(ctx.coconut_final), "--task", "arith", "--n", "2", "--out", str(target)]


for _command in ("sft", "grpo", "eval"):
    for _where in ("is_a_file", "under_a_file"):

        @case(f"f/{_command}_output_{_where}")
        def _(ctx, tmp, command=_command, where=_where):
            blocker = tmp / "results.txt"
            blocker.write_text("precious\n")
            target = blocker if where == "is_a_file" else blocker / "sub"
            return Prepared(_output_argv(command, ctx, target), needles=[str(target), "file"], protect=[blocker])

    @case(f"f/{_command}_output_read_only")
    def _(ctx, tmp, command=_command):
        ro = tmp / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        skip = "running as root, which can write in a read-only folder" if os.geteuid() == 0 else None
        return Prepared(_output_argv(command, ctx, ro / "out"), needles=[str(ro)], protect=[ro], skip=skip)


# g. nothing to train
for _override in ("max_steps=0", "num_train_examples=0", "num_train_epochs=0"):

    @case(f"g/sft_{_override}")
    def _(ctx, tmp, override=_override):
        out = tmp / "run"
        return Prepared(["sft", f"output_dir={out}", *TINY, override], needles=[override.split("=")[0]], no_checkpoints_in=[out])


# h. config errors
for _command, _override, _needles in [
    ("sft", "learnin_rate=1e-3", ["learnin_rate", "Did you mean 'learning_rate'"]),
    ("grpo", "num_generations=1", ["num_generations"]),
    ("grpo", "temperature=-1", ["temperature"]),
    ("grpo", "top_p=0", ["top_p"]),
    ("grpo", "top_p=1.5", ["top_p"]),
    ("grpo", "dropout_p=1", ["dropout_p"]),
    ("sft", "per_device_train_batch_size=0", ["per_device_train_batch_size"]),
    ("sft", "logging_steps=0", ["logging_steps"]),
    ("grpo", "beta=-1", ["beta"]),
    ("grpo", "epsilon=0", ["epsilon"]),
    ("grpo", "loss_type=ppo", ["loss_type", "ppo"]),
]:

    @case(f"h/{_command}_{_override}")
    def _(ctx, tmp, command=_command, override=_override, needles=_needles):
        out = tmp / "run"
        extra = ["model_name_or_path=some/sft"] if command == "grpo" else []
        return Prepared([command, f"output_dir={out}", *extra, override], needles=needles, no_checkpoints_in=[out])


@case("h/sweep_typo_in_grpo_block")
def _(ctx, tmp):
    out = tmp / "sweep"
    config = tmp / "sweep.yaml"
    config.write_text(f"out: {out}\nsft_checkpoints: [x]\ngrpo: {{learnin_rate: 1e-4}}\n")
    return Prepared(["sweep", "--config", str(config)], needles=["learnin_rate", "learning_rate"],
                    must_not_exist=[out / "sft", out / "results.json"])  # fmt: skip


# i. reruns in a run folder
def _copy_cot(ctx: Ctx, tmp: Path) -> Path:
    out = tmp / "cot"
    shutil.copytree(ctx.cot, out)
    return out


@case("i/rerun_with_mode_coconut")
def _(ctx, tmp):
    out = _copy_cot(ctx, tmp)
    return Prepared(["sft", f"output_dir={out}", *COT, "mode=coconut"], needles=["mode", str(out)], protect=[out])


@case("i/rerun_with_changed_learning_rate")
def _(ctx, tmp):
    out = _copy_cot(ctx, tmp)
    return Prepared(["sft", f"output_dir={out}", *COT, "learning_rate=5e-4"], needles=["learning_rate"], protect=[out])


@case("i/identical_rerun_is_a_no_op")
def _(ctx, tmp):
    out = _copy_cot(ctx, tmp)
    return Prepared(["sft", f"output_dir={out}", *COT], expect="success", protect=[out],
                    check=lambda rc, stdout, err: None if "already complete" in stdout else "no 'already complete'")  # fmt: skip


@case("i/checkpoint_5_of_another_run")
def _(ctx, tmp):
    out = _copy_cot(ctx, tmp)
    shutil.copytree(ctx.other / "checkpoint-4", out / "checkpoint-5")
    return Prepared(["sft", f"output_dir={out}", *COT], needles=["checkpoint-5", "another run"], protect=[out])


@case("i/locked_by_another_process")
def _(ctx, tmp):
    out = _copy_cot(ctx, tmp)
    return Prepared(["sft", f"output_dir={out}", *COT], needles=[str(out), "in use"], protect=[out], lock=out / ".lock")


# j. damaged newest checkpoint
def _killed(ctx: Ctx, tmp: Path) -> Path:
    out = _copy_cot(ctx, tmp)
    shutil.rmtree(out / "final")
    return out


def _damage(checkpoint: Path, how: str) -> None:
    if how == "weights":
        w = checkpoint / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    else:
        (checkpoint / "trainer_state.json").unlink()


def _same_final_as(reference: Path, out: Path, warned: str):
    def check(rc, stdout, err):
        import torch
        from safetensors.torch import load_file

        if not any(line.startswith("latentrl: warning:") and warned in line for line in err.splitlines()):
            return f"no warning naming {warned}"
        if not (out / "final" / "model.safetensors").exists():
            return "no final/"
        a, b = load_file(reference / "final" / "model.safetensors"), load_file(out / "final" / "model.safetensors")
        differ = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
        return f"final weights differ from the uninterrupted run's ({differ[:3]})" if differ or a.keys() != b.keys() else None

    return check


for _how in ("weights", "trainer_state"):

    @case(f"j/newest_checkpoint_damaged_{_how}_resumes")
    def _(ctx, tmp, how=_how):
        out = _killed(ctx, tmp)
        _damage(out / "checkpoint-4", how)
        return Prepared(["sft", f"output_dir={out}", *COT, "resume_from_checkpoint=true", "max_steps=4"], expect="success",
                        check=_same_final_as(ctx.cot, out, "checkpoint-4"))  # fmt: skip


@case("j/every_checkpoint_damaged")
def _(ctx, tmp):
    out = _killed(ctx, tmp)
    for d in checkpoint_dirs(out):
        _damage(d, "weights")
    return Prepared(["sft", f"output_dir={out}", *COT, "resume_from_checkpoint=true", "max_steps=4"],
                    needles=["damaged", str(out)], protect=[out])  # fmt: skip


# k. crafted optimizer.pt
@case("k/crafted_optimizer_pt")
def _(ctx, tmp):
    import torch

    out = _killed(ctx, tmp)
    marker = tmp / "MARKER"
    torch.save({"optimizer": WritesMarker(str(marker)), "scheduler": {}, "rng": []}, out / "checkpoint-4" / "optimizer.pt")
    write_manifest(out / "checkpoint-4")

    def check(rc, stdout, err):  # exit 0: checkpoint-4 must have been skipped with a warning
        ok = any(line.startswith("latentrl: warning:") and "checkpoint-4" in line for line in err.splitlines())
        return None if ok else "exit 0 without a warning naming checkpoint-4"

    return Prepared(["sft", f"output_dir={out}", *COT, "resume_from_checkpoint=true", "max_steps=4"],
                    expect="error_or_warning", needles=["optimizer.pt"], must_not_exist=[marker],
                    protect_if_error=[out], check=check)  # fmt: skip


# l. diverging runs
@case("l/sft_learning_rate_1e6")
def _(ctx, tmp):
    out = tmp / "run"
    return Prepared(["sft", f"output_dir={out}", *TINY, "mode=cot", "num_train_epochs=3", "save_steps=1",
                     "learning_rate=1e6", "max_grad_norm=0"], needles=[("nan", "inf"), "step"],
                    finite_checkpoints_in=out, must_not_exist=[out / "final"])  # fmt: skip


@case("l/grpo_learning_rate_1e6")
def _(ctx, tmp):
    (tmp / "text_reward.py").write_text("import zlib\ndef by_text(prompts, completions, **kw):\n"
                                        "    return [zlib.crc32(c.encode()) % 3 / 2 for c in completions]\n")  # fmt: skip
    out = tmp / "grpo"
    return Prepared(grpo(ctx, out, "max_steps=3", "save_steps=1", "learning_rate=1e6", "max_grad_norm=0",
                         "reward_funcs=[text_reward:by_text]"), needles=[("nan", "inf"), "step"], pythonpath=[tmp],
                    finite_checkpoints_in=out, must_not_exist=[out / "final"], protect=[ctx.coconut])  # fmt: skip


# extra: a checkpoint with finite weights whose forward is NaN (what the diverging GRPO run leaves)
for _samples in ("1", "4"):

    @case(f"extra/eval_nan_logits_samples_{_samples}")
    def _(ctx, tmp, samples=_samples):
        import torch
        from safetensors.torch import load_file, save_file

        ckpt = tmp / "diverged"
        shutil.copytree(ctx.coconut_final, ckpt)
        g = torch.Generator().manual_seed(0)
        tensors = load_file(ckpt / "model.safetensors")
        tensors = {k: (v + 1e6 * torch.randn(v.shape, generator=g).sign()).contiguous() for k, v in tensors.items()}
        save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
        out = eval_out(tmp)
        return Prepared(["eval", "--checkpoint", str(ckpt), "--task", "arith", "--n", "2", "--samples", samples,
                         "--max-new-tokens", "8", "--out", str(out), "task_kwargs={num_steps: 2}"],
                        needles=[("nan", "inf")], protect=[out])  # fmt: skip


# ---------------------------------------------------------------------------------------------- running


def latentrl(argv: list[str], cwd: Path, pythonpath: list[Path] = (), timeout: float = 600):
    env = {k: v for k, v in os.environ.items() if k != "LATENTRL_DEBUG"}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "latentrl.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def build_material(work: Path) -> Ctx:
    ctx = Ctx(work / "cot", work / "coconut", work / "other")
    work.mkdir(parents=True, exist_ok=True)
    for out, args in ((ctx.cot, COT), (ctx.coconut, COCONUT), (ctx.other, [*COT, "seed=1"])):
        proc = latentrl(["sft", f"output_dir={out}", *args], cwd=work)
        if proc.returncode != 0:
            sys.exit(f"building {out} failed:\n{proc.stderr[-3000:]}")
    return ctx


def names_problem(line: str, needles: list) -> bool:
    return all(any(o.lower() in line.lower() for o in (n if isinstance(n, tuple) else (n,))) for n in needles)


def classify(p: Prepared, rc: int, stdout: str, stderr: str, damage: list[str]) -> tuple[str, str | None]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    clear = rc == 2 and last.startswith("latentrl: error:") and "Traceback" not in stderr
    if p.expect == "error" and rc == 0:  # what it then wrote over is reported, but the fault is the acceptance
        return "silent_accept", "; ".join(damage) or None
    if damage:
        return "damage", "; ".join(damage)
    if "Traceback" in stderr:
        return "traceback", None
    if p.expect == "error":
        return ("clear", None) if clear else ("other", None)
    if rc == 0:
        problem = p.check(rc, stdout, stderr) if p.check else None
        return ("wrong_result", problem) if problem else ("ok", None)
    if p.expect == "error_or_warning" and clear:
        return "clear", None
    return "other", None


def run_case(name: str, setup, ctx: Ctx, root: Path) -> dict:
    tmp = root / name.replace("/", "__")
    tmp.mkdir(parents=True)
    p = setup(ctx, tmp)
    row = {"name": name, "argv": ["latentrl", *p.argv], "expect": p.expect}
    if p.skip:
        return row | {"class": "skipped", "reason": p.skip}
    before = {str(path): snapshot(path) for path in [*p.protect, *p.protect_if_error]}
    held = None
    if p.lock is not None:
        held = open(p.lock, "a+")
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    t = time.perf_counter()
    try:
        proc = latentrl(p.argv, cwd=tmp, pythonpath=p.pythonpath)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, stdout, stderr = -1, err.stdout or "", (err.stderr or "") + "\n(timed out)"
    finally:
        if held is not None:
            held.close()
    seconds = time.perf_counter() - t
    damage = []
    for path in [*p.protect, *(p.protect_if_error if rc != 0 else [])]:
        if snapshot(path) != before[str(path)]:
            changed = sorted(set(before[str(path)].items()) ^ set(snapshot(path).items()))
            damage.append(f"{path} changed ({', '.join(sorted({k for k, _ in changed})[:5])})")
    damage += [f"{path} was written" for path in p.must_not_exist if path.exists()]
    if rc != 0:
        damage += [f"{d} was written by a failed run" for out in p.no_checkpoints_in for d in checkpoint_dirs(out)]
    if p.finite_checkpoints_in is not None:
        damage += [f"{d} holds NaN/inf weights" for d in non_finite_checkpoints(p.finite_checkpoints_in)]
    cls, problem = classify(p, rc, stdout, stderr, damage)
    lines = [line for line in stderr.splitlines() if line.strip()]
    row |= {"exit_code": rc, "class": cls, "last_stderr_line": lines[-1] if lines else "", "stderr_lines": len(lines),
            "seconds": round(seconds, 2)}  # fmt: skip
    if p.expect != "success":
        row["names_problem"] = names_problem(row["last_stderr_line"], p.needles) if rc == 2 else False
    if problem:
        row["problem"] = problem
    if cls in ("traceback", "other"):
        row["stderr_tail"] = "\n".join(lines[-6:])
    return row


def environment() -> dict:
    import accelerate
    import pydantic
    import torch
    import transformers

    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return ""

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "pydantic": pydantic.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "euid": os.geteuid(), "commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no"))}  # fmt: skip


# m. soft thinking keys (issue "Soft thinking and SofT-GRPO")
SOFT_CASES = {
    "soft_keys_on_a_coconut_checkpoint": ("coconut", ["soft_top_k=3"], ["soft_top_k"]),
    "soft_mode_on_a_coconut_checkpoint": ("coconut", ["thinking_mode=soft"], ["coconut"]),
    "top_k_larger_than_the_vocabulary": ("cot", ["thinking_mode=soft", "soft_top_k=100000"], ["soft_top_k", "vocabulary"]),
    "gumbel_tau_zero": ("cot", ["thinking_mode=soft", "exploration=gumbel", "gumbel_tau=0"], ["gumbel_tau"]),
    "end_of_thinking_not_one_token": ("cot", ["thinking_mode=soft", "end_of_thinking=</think>"], ["end_of_thinking", "</think>"]),
    "gumbel_without_soft_thinking": ("cot", ["exploration=gumbel"], ["gumbel"]),
}  # fmt: skip
for _name, (_which, _keys, _needles) in SOFT_CASES.items():

    @case(f"m/{_name}")
    def _(ctx, tmp, which=_which, keys=_keys, needles=_needles):
        ckpt = ctx.coconut_final if which == "coconut" else ctx.cot / "final"
        out = eval_out(tmp)
        return Prepared(["eval", "--checkpoint", str(ckpt), "--task", "arith", "--n", "2", "--out", str(out), *keys],
                        needles=needles, protect=[out])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/bad_inputs.json")
    ap.add_argument("--only", help="run only the cases whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder of the cases")
    args = ap.parse_args()
    cases = [(n, s) for n, s in CASES if not args.only or args.only in n]
    root = Path(tempfile.mkdtemp(prefix="latentrl_bad_inputs_"))
    t0, load_before = time.time(), os.getloadavg()
    try:
        print(f"building the material in {root} ...", flush=True)
        ctx = build_material(root / "material")
        rows = []
        for name, setup in cases:
            row = run_case(name, setup, ctx, root / "cases")
            rows.append(row)
            print(f"{row['class']:>13}  {row.get('exit_code', '-'):>3}  {name}  {row.get('last_stderr_line', row.get('reason', ''))[:110]}",
                  flush=True)  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    tried = [r for r in rows if r["class"] != "skipped"]
    totals = {"tried": len(tried), **{c: sum(r["class"] == c for r in tried) for c in CLASSES},
              "skipped": len(rows) - len(tried),
              "expected_error": sum(r["expect"] != "success" for r in tried),
              "clear_but_not_naming_the_problem": sum(r["class"] == "clear" and not r.get("names_problem", True) for r in tried),
              "extra_stderr_lines_before_the_error": sum(r["class"] == "clear" and r["stderr_lines"] > 1 for r in tried)}  # fmt: skip
    result = {"benchmark": "bad_input_catalogue", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "env": environment() | {"loadavg_before": load_before, "loadavg_after": os.getloadavg()},
              "seconds": round(time.time() - t0, 1), "totals": totals, "cases": rows}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(totals, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
