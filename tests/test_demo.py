"""The demo end to end at toy scale: outputs, checkpoints, determinism."""

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from latentrl.cli import main

TOY = ["num_train_examples=64", "cot_epochs=1", "coconut_epochs=2", "max_latent_stage=1", "n_layer=1", "n_embd=32",
       "eval_n=8", "eval_samples=2", "grpo_steps=2", "disable_tqdm=true", "task_kwargs={num_steps: 2}",
       "grpo={generation_batch_size: 8, num_generations: 4, per_device_train_batch_size: 8, eval_n: 4}"]  # fmt: skip


def test_demo_writes_report_checkpoints_and_plots_deterministically(tmp_path):
    assert main(["demo", f"out={tmp_path / 'a'}", *TOY]) == 0
    assert main(["demo", f"out={tmp_path / 'b'}", *TOY]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ["report.md", "report.json", "sft_loss.png", "grpo.png", "config.yaml"]:
        assert (a / name).exists(), name
    for ckpt in ["sft", "grpo"]:
        assert AutoModelForCausalLM.from_pretrained(a / ckpt) is not None
        assert AutoTokenizer.from_pretrained(a / ckpt) is not None
        assert json.loads((a / ckpt / "latentrl.json").read_text())["thinking_mode"] == "coconut"
    ra, rb = json.loads((a / "report.json").read_text()), json.loads((b / "report.json").read_text())
    assert set(ra["results"]) == {"no-CoT", "CoT", "Coconut", "Coconut + Dropout-GRPO"}
    for name in ra["results"]:
        for key in ["accuracy", "pass@2", "maj@2", "mean_tokens"]:
            assert ra["results"][name][key] == rb["results"][name][key], (name, key)
    assert "| Coconut + Dropout-GRPO |" in (a / "report.md").read_text()
    import torch

    assert ra["versions"]["torch"] == torch.__version__ and ra["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert ra["versions"]["cpu"]  # the figures are exact for one kind of CPU: which one made them
