"""End to end through the command line: sft (CoT -> Coconut), eval, data export, resume, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from latentrl.cli import main
from latentrl.tasks import load_examples

TINY = ["n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=128", "per_device_train_batch_size=32",
        "disable_tqdm=true", "logging_steps=1", "task_kwargs={num_steps: 2}"]  # fmt: skip


def sft(tmp: Path, name: str, *extra: str) -> Path:
    assert main(["sft", f"output_dir={tmp / name}", *TINY, *extra]) == 0
    return tmp / name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cot = sft(tmp, "cot", "mode=cot", "num_train_epochs=2")
    coconut = sft(tmp, "coconut", "mode=coconut", f"model_name_or_path={cot / 'final'}", "start_stage=1",
                  "max_latent_stage=2", "num_train_epochs=2", "c_thought=2")  # fmt: skip
    return tmp, cot, coconut


def test_sft_writes_hf_checkpoints_with_latent_metadata(trained):
    _, cot, coconut = trained
    for d in [cot / "final", coconut / "final", coconut / "stage-1", coconut / "stage-2"]:
        assert AutoModelForCausalLM.from_pretrained(d) is not None and AutoTokenizer.from_pretrained(d) is not None
        assert (d / "model.safetensors").exists()
    meta = json.loads((coconut / "final" / "latentrl.json").read_text())
    assert meta["thinking_mode"] == "coconut" and meta["thoughts_per_step"] == 2 and meta["num_latents"] == 4
    tok = AutoTokenizer.from_pretrained(coconut / "final")
    assert tok.convert_ids_to_tokens(meta["latent_token_id"]) == "<|latent|>"
    assert tok.convert_ids_to_tokens(meta["start_latent_token_id"]) == "<|start-latent|>"
    log = [json.loads(x) for x in (coconut / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log][0] == 1 and log[-1]["stage"] == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_eval_writes_metrics_and_predictions(trained):
    tmp, _, coconut = trained
    out = tmp / "eval"
    assert main(["eval", "--checkpoint", str(coconut / "final"), "--task", "arith", "--n", "6", "--samples", "4",
                 "--out", str(out), "--mc-masks", "3", "task_kwargs={num_steps: 2}"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mc_masks"] == 3 and 0 <= metrics["bma_accuracy"] <= 1
    for key in ["accuracy", "pass@1", "pass@2", "pass@4", "maj@4", "mean_tokens", "mean_latent_tokens"]:
        assert key in metrics
    assert metrics["mean_latent_tokens"] == 4.0
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert set(rows[0]) == {"question", "answer", "prompt_ids", "completion_ids", "completion", "thinking_steps", "prediction",
                            "correct"}
    meta = json.loads((coconut / "final" / "latentrl.json").read_text())
    assert rows[0]["prompt_ids"].count(meta["latent_token_id"]) == 4
    assert metrics["accuracy"] == sum(r["correct"] for r in rows) / 6


def test_data_export_matches_the_demo_distribution(tmp_path):
    out = tmp_path / "arith.jsonl"
    assert main(["data", "export", "--task", "arith", "--split", "test", "--n", "20", "--seed", "3", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows == [e.to_dict() for e in load_examples("arith", "test", 20, 3)]
    assert main(["data", "export", "--task", "prosqa", "--n", "3", "--out", str(tmp_path / "p.jsonl")]) == 0


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    common = ["mode=cot", "num_train_epochs=2", "save_steps=1"]
    full = sft(tmp_path, "full", *common)
    sft(tmp_path, "cut", *common, "max_steps=3")  # "interrupted" after 3 of 8 steps
    resumed = sft(tmp_path, "cut", *common, "resume_from_checkpoint=true")  # a changed budget: an explicit resume
    a = AutoModelForCausalLM.from_pretrained(full / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(resumed / "final").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    steps = [json.loads(x)["step"] for x in (resumed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_unknown_config_key_is_named(tmp_path, capsys):
    assert main(["sft", f"output_dir={tmp_path}", "learnin_rate=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "learnin_rate" in err and "learning_rate" in err


def test_malformed_jsonl_names_file_and_line_and_keeps_outputs(trained, tmp_path, capsys):
    _, _, coconut = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1", "steps": [], "answer": "2"}\n{"question": "2+2", "answer": \n')
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"keep": true}')
    assert main(["eval", "--checkpoint", str(coconut / "final"), "--data", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err
    assert (out / "metrics.json").read_text() == '{"keep": true}'


def test_missing_field_and_unknown_task(tmp_path, capsys):
    bad = tmp_path / "f.jsonl"
    bad.write_text('{"question": "1+1", "steps": []}\n')
    assert main(["data", "export", "--task", "jsonl", "--path", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "f.jsonl:1" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()
    assert main(["data", "export", "--task", "nosuchtask", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "nosuchtask" in capsys.readouterr().err


def test_missing_checkpoint_is_reported(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nope"), "--task", "arith", "--out", str(tmp_path / "e")]) == 2
    assert "not found" in capsys.readouterr().err


def test_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "latentrl.cli", "sft", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "c_thought" in proc.stdout and "uniform_prob" in proc.stdout


def test_bma_with_zero_drop_rate_equals_greedy(trained):
    from latentrl.eval.evaluate import EvalConfig, evaluate
    from latentrl.models import load_checkpoint

    _, cot, _ = trained
    model, tok, thinking = load_checkpoint(cot / "final")
    examples = load_examples("arith", "test", 12, 0, num_steps=2)
    m = evaluate(model, tok, thinking, examples, EvalConfig(mc_masks=3, dropout_p=0.0)).metrics
    assert m["bma_accuracy"] == m["accuracy"] and m["mc_mask_accuracy"] == m["accuracy"]


def test_two_processes_equal_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo, batch 16 each) = 1 process with batch 32."""
    common = ["sft", "n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=128", "disable_tqdm=true",
              "mode=cot", "num_train_epochs=1", "task_kwargs={num_steps: 2}", "logging_steps=1"]  # fmt: skip
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "latentrl.cli",
                          *common, f"output_dir={tmp_path / 'two'}", "per_device_train_batch_size=16"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    assert main([*common, f"output_dir={tmp_path / 'one'}", "per_device_train_batch_size=32"]) == 0
    steps = [json.loads(x)["step"] for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # 128 examples / (2 processes x 16)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_two_processes_with_uneven_shards_do_not_hang(tmp_path):
    """33 examples over 2 processes: the epoch is cut to equal shards, so both take the same steps."""
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "latentrl.cli",
                          "sft", "n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=33", "disable_tqdm=true",
                          "mode=cot", "num_train_epochs=1", "task_kwargs={num_steps: 2}", "per_device_train_batch_size=16",
                          f"output_dir={tmp_path / 'two'}"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((tmp_path / "two" / "final" / "trainer_state.json").read_text())["global_step"] == 1
