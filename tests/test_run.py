"""The run skeleton: a killed run resumes bit-identically, checkpoints are written where asked, the
log holds each step once, a crash mid-swap is mended, and what is logged is what was computed."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from latentrl.cli import main
from latentrl.models.checkpoint import recover_swap
from latentrl.train.run import checkpoints, read_log

from cli_runs import TINY, grpo_from_a_cot_checkpoint


def weights(path: Path) -> dict:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "weights differ"


def test_a_run_killed_at_a_random_step_resumes_to_identical_weights(tmp_path):
    """SIGKILL a real SFT run (a Coconut curriculum, so the kill may fall on either side of a stage switch)
    when its k-th checkpoint appears, k random; the same command again ends with the weights of an
    uninterrupted run, and the log holds every step exactly once."""
    args = [*TINY, "mode=coconut", "start_stage=0", "max_latent_stage=1", "num_train_epochs=3", "save_steps=1"]
    assert main(["sft", f"output_dir={tmp_path / 'full'}", *args]) == 0
    total = read_log(tmp_path / "full" / "log.jsonl")[-1]["step"]  # 18 steps: 6 per epoch
    k = random.Random(os.getpid()).randint(2, total - 3)
    cmd = [sys.executable, "-m", "latentrl.cli", "sft", f"output_dir={tmp_path / 'cut'}", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "cut" / f"checkpoint-{k}").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "final").exists(), f"the run finished before the kill at checkpoint-{k}"
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert_same_weights(tmp_path / "full" / "final", tmp_path / "cut" / "final")
    steps = [r["step"] for r in read_log(tmp_path / "cut" / "log.jsonl") if "loss" in r]
    assert steps == list(range(1, total + 1)), f"killed after checkpoint-{k}"


def test_checkpoints_only_where_asked_and_a_finished_rerun_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sft", f"output_dir={out}", *TINY, "mode=cot", "num_train_epochs=2", "save_steps=0"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["final"]  # no per-epoch checkpoint
    before = {p: p.read_bytes() for p in (out / "final").iterdir()}
    assert main(["sft", f"output_dir={out}", *TINY, "mode=cot", "num_train_epochs=2", "save_steps=0"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (out / "final").iterdir()} == before
    assert main(["sft", f"output_dir={tmp_path / 'b'}", *TINY, "mode=cot", "num_train_epochs=2", "save_steps=4"]) == 0
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]


def test_the_logged_loss_is_the_mean_over_the_logging_window(tmp_path):
    common = [*TINY, "mode=cot", "num_train_epochs=1", "save_steps=0"]
    assert main(["sft", f"output_dir={tmp_path / 'a'}", *common]) == 0
    assert main(["sft", f"output_dir={tmp_path / 'b'}", *common, "logging_steps=3"]) == 0
    each = [r["loss"] for r in read_log(tmp_path / "a" / "log.jsonl")]
    windows = read_log(tmp_path / "b" / "log.jsonl")
    assert [r["step"] for r in windows] == [3, 6]
    for r in windows:
        assert r["loss"] == pytest.approx(sum(each[r["step"] - 3 : r["step"]]) / 3, rel=1e-6)


def test_a_crash_between_the_two_renames_of_a_checkpoint_is_mended(tmp_path):
    stage = tmp_path / "stage-1"
    (tmp_path / "stage-1.old").mkdir()
    (tmp_path / "stage-1.old" / "model.safetensors").write_text("previous")
    (tmp_path / "stage-1.tmp").mkdir()  # the new copy never completed
    recover_swap(stage)
    assert (stage / "model.safetensors").read_text() == "previous"
    assert not (tmp_path / "stage-1.old").exists() and not (tmp_path / "stage-1.tmp").exists()


def test_an_explicit_resume_with_a_new_learning_rate_uses_it(tmp_path):
    out = tmp_path / "run"
    base = [f"output_dir={out}", *TINY, "mode=cot", "num_train_epochs=2", "save_steps=3"]
    assert main(["sft", *base, "max_steps=3"]) == 0
    assert main(["sft", *base, "learning_rate=0.0005", "resume_from_checkpoint=true"]) == 0
    log = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert [r["learning_rate"] for r in log] == [1e-3] * 3 + [5e-4] * 9
    assert (out / "config-resume-3.yaml").exists()
    assert "learning_rate: 0.001" in (out / "config.yaml").read_text()  # the original stays as it was
    assert json.loads((out / "run.json").read_text())["configs"] == ["config.yaml", "config-resume-3.yaml"]


def test_grpo_logs_no_timing_of_work_it_did_not_do(tmp_path):
    sft = tmp_path / "sft"
    assert main(["sft", f"output_dir={sft}", *TINY, "mode=cot", "num_train_epochs=1", "save_steps=0"]) == 0
    common = [f"model_name_or_path={sft / 'final'}", "num_generations=4", "generation_batch_size=8",
              "per_device_train_batch_size=8", "max_completion_length=8", "task_kwargs={num_steps: 2}",
              "disable_tqdm=true", "max_steps=1", "save_steps=0", "exploration=none"]  # fmt: skip
    assert main(["grpo", f"output_dir={tmp_path / 'a'}", *common]) == 0
    assert "time/old_ref_logprob" not in read_log(tmp_path / "a" / "log.jsonl")[0]
    assert main(["grpo", f"output_dir={tmp_path / 'b'}", *common, "beta=0.1"]) == 0
    assert read_log(tmp_path / "b" / "log.jsonl")[0]["time/old_ref_logprob"] > 0


def sdpa_spy(monkeypatch) -> list[tuple[bool, bool]]:
    """Records ``(gradients on, flash attention allowed)`` at every SDPA call of the models."""
    calls, real = [], torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((torch.is_grad_enabled(), torch.backends.cuda.flash_sdp_enabled()))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


@pytest.mark.parametrize("command", ["sft", "grpo"])
def test_under_bf16_on_a_cpu_the_passes_with_a_backward_run_math_attention(tmp_path, monkeypatch, command):
    """torch's CPU flash-attention backward is slow in bf16: the passes whose backward follows (SFT's forward, the
    GRPO update's recomputation) run SDPA's math backend under ``mixed_precision=bf16``; the rollouts keep flash
    attention, and a float32 run uses it everywhere."""
    if command == "sft":
        keys = ["sft", *TINY, "mode=cot", "num_train_epochs=1", "save_steps=0"]
    else:
        _, common = grpo_from_a_cot_checkpoint(tmp_path, max_completion_length=8)
        keys = ["grpo", *common]
    calls = sdpa_spy(monkeypatch)
    assert main([*keys, f"output_dir={tmp_path / 'fp32'}"]) == 0
    assert calls and all(flash for _, flash in calls)
    calls.clear()
    assert main([*keys, f"output_dir={tmp_path / 'bf16'}", "mixed_precision=bf16"]) == 0
    with_grad = {flash for grad, flash in calls if grad}
    assert with_grad == {False}  # every pass with gradients: math
    assert command == "sft" or True in {flash for grad, flash in calls if not grad}  # the rollouts: flash
    assert torch.backends.cuda.flash_sdp_enabled()  # restored


def test_math_attention_only_on_a_cpu_under_reduced_precision_and_for_small_weights():
    from types import SimpleNamespace

    from latentrl.models import build_tiny_model
    from latentrl.train.common import MATH_ATTENTION_MAX_ELEMENTS, math_attention

    model, _ = build_tiny_model("gpt2", n_layer=1, n_embd=32, n_head=4, max_length=64)
    acc = lambda device, mp: SimpleNamespace(device=torch.device(device), mixed_precision=mp)  # noqa: E731
    assert math_attention(acc("cpu", "bf16"), model, (64, 72)) and math_attention(acc("cpu", "fp16"), model, (1, 8))
    assert not math_attention(acc("cpu", "no"), model, (64, 72))
    assert not math_attention(acc("cuda", "bf16"), model, (64, 72))
    L = int((MATH_ATTENTION_MAX_ELEMENTS / 4) ** 0.5)  # 4 heads, one row: the bound's length
    assert math_attention(acc("cpu", "bf16"), model, (1, L)) and not math_attention(acc("cpu", "bf16"), model, (1, L + 1))


def test_math_attention_gives_flash_attentions_gradients_under_bf16():
    """The backend is a speed choice: under bf16 autocast the math backend's loss and gradients equal flash
    attention's within bf16 rounding."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from latentrl.models import build_tiny_model

    model, tok = build_tiny_model("llama", n_layer=2, n_embd=64, n_head=4, max_length=64, seed=0)
    ids = torch.randint(0, len(tok), (4, 24), generator=torch.Generator().manual_seed(0))
    grads = []
    for backends in ([SDPBackend.FLASH_ATTENTION], [SDPBackend.MATH]):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16), sdpa_kernel(backends):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (flash_loss, flash), (math_loss, math) = grads
    assert math_loss == pytest.approx(flash_loss, rel=1e-2)
    for name in flash:
        torch.testing.assert_close(math[name], flash[name], rtol=0.05, atol=0.05 * flash[name].abs().max().item(), msg=name)


def test_grpo_runs_under_bf16_autocast(tmp_path):
    """``mixed_precision`` reaches GRPO's rollouts and log-prob recomputation (accelerate's autocast)."""
    _, common = grpo_from_a_cot_checkpoint(tmp_path, max_completion_length=8)
    assert main(["grpo", f"output_dir={tmp_path / 'bf16'}", *common, "mixed_precision=bf16"]) == 0
    assert main(["grpo", f"output_dir={tmp_path / 'fp32'}", *common]) == 0
    a, b = read_log(tmp_path / "bf16" / "log.jsonl"), read_log(tmp_path / "fp32" / "log.jsonl")
    assert b[0]["grad_norm"] > 0 and a[0]["grad_norm"] > 0
    assert a[0]["grad_norm"] != b[0]["grad_norm"]  # bf16 autocast changes the numbers


@pytest.mark.parametrize("mode", [[], ["thinking_mode=soft", "exploration=gumbel"]], ids=["discrete", "soft"])
def test_grpo_and_eval_decode_the_same_with_every_engine_setting(tmp_path, monkeypatch, mode):
    """The engine keys (``compact_at``, ``cache_implementation``, ``torch_compile``; compile on its ``eager``
    backend here) reach GRPO's rollouts and eval's samples through the CLI and change none of their numbers,
    in discrete decoding and in soft thinking (SofT-GRPO)."""
    import latentrl.models.latent as latent

    real = torch.compile
    monkeypatch.setattr(latent.torch, "compile", lambda fn, **kw: real(fn, backend="eager", **kw))
    sft, common = grpo_from_a_cot_checkpoint(tmp_path, max_completion_length=12)
    engines = {"kept": ["compact_at=0"], "compacted": ["compact_at=1e-9"], "static": ["cache_implementation=static"],
               "compiled": ["cache_implementation=static", "torch_compile=true"], "compiled_dynamic": ["torch_compile=true"]}  # fmt: skip
    logs, evals = {}, {}
    for name, keys in engines.items():
        keys = [*mode, *keys]
        assert main(["grpo", f"output_dir={tmp_path / name}", *common, *keys]) == 0
        logs[name] = [r[k] for r in read_log(tmp_path / name / "log.jsonl") for k in ("reward", "completions/mean_length", "loss")]
        assert main(["eval", f"checkpoint={sft / 'final'}", "task=arith", "n=6", "samples=4", "task_kwargs={num_steps: 2}",
                     f"out={tmp_path / ('eval_' + name)}", *[k for k in keys if not k.startswith("exploration")]]) == 0  # fmt: skip
        evals[name] = json.loads((tmp_path / f"eval_{name}" / "metrics.json").read_text())
    for name in engines:
        assert logs[name] == pytest.approx(logs["kept"], rel=1e-4), name
        assert {k: v for k, v in evals[name].items() if "accuracy" in k or "pass@" in k} == pytest.approx(
            {k: v for k, v in evals["kept"].items() if "accuracy" in k or "pass@" in k}), name


def test_tensorboard_through_accelerate_beside_the_jsonl_log(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    out = tmp_path / "run"
    assert main(["sft", f"output_dir={out}", *TINY, "mode=cot", "num_train_epochs=1", "save_steps=0",
                 "report_to=[jsonl, tensorboard]"]) == 0  # fmt: skip
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert len(read_log(out / "log.jsonl")) == 6


def test_a_folder_without_run_json_keeps_the_users_files(tmp_path, capsys):
    """A fresh run mends and deletes only what a run writes: the user's own *.old, *.tmp and configs stay."""
    out = tmp_path / "run"
    for d in ("results", "results.old", "data.old", "scratch.tmp"):
        (out / d).mkdir(parents=True)
    (out / "my_config.yaml").write_text("mine\n")
    assert main(["sft", f"output_dir={out}", *TINY, "mode=cot", "num_train_epochs=1", "save_steps=0"]) == 0
    assert {p.name for p in out.iterdir()} >= {"results", "results.old", "data.old", "scratch.tmp", "my_config.yaml"}
    assert not (out / "data").exists() and (out / "my_config.yaml").read_text() == "mine\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "log.jsonl").write_text('{"step": 1}\n')
    capsys.readouterr()
    assert main(["sft", f"output_dir={other}", *TINY, "mode=cot", "num_train_epochs=1"]) == 2  # another run's log
    assert "log.jsonl" in capsys.readouterr().err and (other / "log.jsonl").read_text() == '{"step": 1}\n'


def test_a_resume_before_any_checkpoint_records_the_new_config(tmp_path):
    out = tmp_path / "run"
    base = [f"output_dir={out}", *TINY, "mode=cot", "num_train_epochs=1", "save_steps=0"]
    assert main(["sft", *base]) == 0
    import shutil

    shutil.rmtree(out / "final")  # as if killed before its first checkpoint
    assert main(["sft", *base, "learning_rate=0.002", "resume_from_checkpoint=true"]) == 0
    assert "learning_rate: 0.002" in (out / "config.yaml").read_text()
    assert main(["sft", *base, "learning_rate=0.002"]) == 0  # the recorded config is the one it ran with


def test_the_loss_window_survives_a_resume(tmp_path):
    args = [*TINY, "mode=cot", "num_train_epochs=2", "save_steps=2", "logging_steps=4"]
    assert main(["sft", f"output_dir={tmp_path / 'full'}", *args]) == 0
    assert main(["sft", f"output_dir={tmp_path / 'cut'}", *args, "max_steps=6"]) == 0
    assert main(["sft", f"output_dir={tmp_path / 'cut'}", *args, "resume_from_checkpoint=true"]) == 0
    full, cut = read_log(tmp_path / "full" / "log.jsonl"), read_log(tmp_path / "cut" / "log.jsonl")
    assert [(r["step"], r["loss"]) for r in full] == [(r["step"], r["loss"]) for r in cut]


def test_no_optimizer_step_in_an_epoch_is_an_error(tmp_path, capsys):
    assert main(["sft", f"output_dir={tmp_path / 'run'}", *TINY, "mode=cot", "num_train_examples=8",
                 "per_device_train_batch_size=8", "gradient_accumulation_steps=2"]) == 2  # fmt: skip
    assert "no optimizer step" in capsys.readouterr().err


def test_an_explicit_resume_after_load_best_model_at_end_continues_from_the_last_state(tmp_path, monkeypatch):
    from latentrl.train import common

    scores = iter([1.0, 0.5, 0.5, 1.0, 0.5, 0.5])  # the best epoch is the first
    monkeypatch.setattr(common, "validation_accuracy", lambda *a, **k: next(scores))
    args = [*TINY, "mode=cot", "save_steps=0", "eval_strategy=epoch", "eval_n=4", "load_best_model_at_end=true"]
    assert main(["sft", f"output_dir={tmp_path / 'full'}", *args, "num_train_epochs=3"]) == 0
    assert main(["sft", f"output_dir={tmp_path / 'cut'}", *args, "num_train_epochs=2"]) == 0
    assert main(["sft", f"output_dir={tmp_path / 'cut'}", *args, "num_train_epochs=3", "resume_from_checkpoint=true"]) == 0
    full, cut = read_log(tmp_path / "full" / "log.jsonl"), read_log(tmp_path / "cut" / "log.jsonl")
    assert [r.get("loss") for r in full] == [r.get("loss") for r in cut]


def test_an_explicit_resume_from_an_older_checkpoint_moves_the_newer_ones_aside(tmp_path, capsys):
    """Resuming from checkpoint-2 of a run that went on to step 6: the later checkpoints, final/ and the
    later log records move to superseded-2/ (not deleted), so rotation keeps the new trajectory's and a
    later automatic resume cannot pick an old-trajectory checkpoint; the run equals one cut at step 2."""
    args = [*TINY, "mode=cot", "num_train_epochs=1", "save_steps=2", "save_total_limit=10"]
    out = tmp_path / "run"
    assert main(["sft", f"output_dir={out}", *args]) == 0
    before = read_log(out / "log.jsonl")
    assert [p.name for p in checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    capsys.readouterr()
    assert main(["sft", f"output_dir={out}", *args, "learning_rate=0.002",
                 f"resume_from_checkpoint={out / 'checkpoint-2'}"]) == 0  # fmt: skip
    assert "moved to" in capsys.readouterr().err
    moved = out / "superseded-2"
    assert sorted(p.name for p in moved.iterdir()) == ["checkpoint-4", "checkpoint-6", "final", "log.jsonl"]
    assert read_log(out / "log.jsonl")[:2] == before[:2]
    assert read_log(moved / "log.jsonl") == before[2:]  # the old trajectory's records, kept
    assert [p.name for p in checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    state = json.loads((out / "final" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and "learning_rate: 0.002" in (out / "config-resume-2.yaml").read_text()
    assert read_log(out / "log.jsonl")[-1]["loss"] != before[-1]["loss"]  # the new trajectory, a new learning rate


def test_a_best_epoch_moved_aside_by_an_explicit_resume_is_chosen_again(tmp_path, monkeypatch, capsys):
    """Resuming from a checkpoint older than best/: best/ moves aside with the rest, the best epoch recorded
    in the checkpoint is forgotten (its weights were overwritten by a later best) and load_best_model_at_end
    picks from the new trajectory instead of failing or loading the old one's weights."""
    import itertools

    from latentrl.train import common

    rising = itertools.count(1)
    monkeypatch.setattr(common, "validation_accuracy", lambda *a, **k: next(rising) / 100)  # every epoch is best
    out = tmp_path / "run"
    args = [*TINY, "mode=cot", "save_steps=2", "save_total_limit=20", "eval_strategy=epoch", "eval_n=4",
            "load_best_model_at_end=true", "num_train_epochs=3"]  # fmt: skip
    assert main(["sft", f"output_dir={out}", *args]) == 0  # best/ at steps 6, 12, 18
    capsys.readouterr()
    assert main(["sft", f"output_dir={out}", *args, f"resume_from_checkpoint={out / 'checkpoint-8'}"]) == 0
    assert "chosen again" in capsys.readouterr().err and (out / "superseded-8" / "best").is_dir()
    final = json.loads((out / "final" / "trainer_state.json").read_text())
    assert final["holds_best"] and final["best"]["epoch"] == 3 and (out / "best").is_dir()
