"""``latentrl analyze entropy``: layer L's residual read-out is the full policy, the per-step table of
the latent modes, and the outputs through the CLI."""

import json

import pytest
import torch

from latentrl.cli import main
from latentrl.eval.entropy import EntropyTable, analyze_batch
from latentrl.exploration import NoExploration
from latentrl.models import ThinkingConfig, build_tiny_model
from latentrl.models.layout import encode_prompt
from latentrl.models.readout import token_entropy
from latentrl.models.thinking import thinking_mode
from latentrl.tasks import load_examples

TINY = ["n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=64", "per_device_train_batch_size=32",
        "disable_tqdm=true", "task_kwargs={num_steps: 2}", "num_train_epochs=1", "save_steps=0"]  # fmt: skip


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_the_last_layer_is_the_full_policy_and_final_norm_moves_only_the_lower_layers(family):
    model, tok = build_tiny_model(family=family, n_layer=3, n_embd=32, n_head=2, seed=2)
    model.eval()
    prompts = [encode_prompt(tok, ex.question, ThinkingConfig()) for ex in load_examples("arith", "test", 3, 0, num_steps=2)]
    gen = thinking_mode("discrete").generate(model, prompts, ThinkingConfig(), exploration=NoExploration(),
                                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_new_tokens=6)  # fmt: skip
    plain, lens = EntropyTable(3), EntropyTable(3)
    analyze_batch(model, gen, plain, use_final_norm=False)
    analyze_batch(model, gen, lens, use_final_norm=True)
    P = gen.prompt_ids.shape[1]
    with torch.no_grad():
        logits = model(torch.cat([gen.prompt_ids, gen.completion_ids], 1),
                       attention_mask=torch.cat([gen.prompt_mask, gen.completion_mask], 1)).logits  # fmt: skip
    full = token_entropy(logits[:, P - 1 : -1])[gen.completion_mask.bool()]  # naive: the policy's own entropy
    assert plain.count == lens.count == full.numel()
    for table in (plain, lens):
        assert table.result()["residual"][-1] == pytest.approx(full.mean().item(), rel=1e-4)
    assert plain.result()["residual"][0] != lens.result()["residual"][0]  # the lens changes the lower layers


def test_analyze_entropy_through_the_cli_in_every_mode(tmp_path):
    assert main(["sft", f"output_dir={tmp_path / 'cot'}", *TINY, "mode=cot"]) == 0
    assert main(["sft", f"output_dir={tmp_path / 'coconut'}", *TINY, "mode=coconut", "start_stage=1", "max_latent_stage=1",
                 f"model_name_or_path={tmp_path / 'cot' / 'final'}"]) == 0  # fmt: skip
    assert main(["grpo", f"output_dir={tmp_path / 'soft'}", f"model_name_or_path={tmp_path / 'cot' / 'final'}",
                 "thinking_mode=soft", "exploration=gumbel", "num_generations=4", "generation_batch_size=8",
                 "per_device_train_batch_size=8", "max_completion_length=12", "task_kwargs={num_steps: 2}",
                 "disable_tqdm=true", "max_steps=1", "save_steps=0"]) == 0  # fmt: skip
    for name in ("cot", "coconut", "soft"):
        out = tmp_path / f"entropy_{name}"
        assert main(["analyze", "entropy", "--checkpoint", str(tmp_path / name / "final"), "--task", "arith", "--n", "6",
                     "--out", str(out), "task_kwargs={num_steps: 2}", "max_new_tokens=16"]) == 0  # fmt: skip
        result = json.loads((out / "entropy.json").read_text())
        assert result["layers"] == 2 and len(result["residual"]) == len(result["delta_ffn"]) == 2
        assert result["tokens"] > 0 and (out / "entropy_by_layer.png").exists()
        assert len((out / "tokens.jsonl").read_text().splitlines()) == 6
        latent = name != "cot"
        assert ("per_thinking_step" in result) == latent and (out / "thinking_heatmap.png").exists() == latent
        if latent:
            assert len(result["per_thinking_step"]["residual"]) == 2 and result["thinking_step_counts"][0] > 0


def test_bad_analyze_input_is_one_clear_error(tmp_path, capsys):
    assert main(["analyze", "entropy", "--checkpoint", str(tmp_path / "nope"), "--task", "arith", "--out", str(tmp_path / "e")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["analyze", "entropy", "--checkpoint", "x", "--task", "arith", "n=0"]) == 2
    assert "n" in capsys.readouterr().err


def test_a_subset_of_read_outs_gives_the_same_numbers(tmp_path):
    """``readouts=[residual, ffn]`` computes only those (no delta without the _in read-out), with the same
    values as the full analysis."""
    ckpt = tmp_path / "cot"
    assert main(["sft", f"output_dir={ckpt}", "mode=cot", *TINY]) == 0
    base = ["analyze", "entropy", "--checkpoint", str(ckpt / "final"), "--task", "arith", "--n", "4",
            "task_kwargs={num_steps: 2}"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "all")]) == 0
    assert main([*base, "readouts=[ffn]", "--out", str(tmp_path / "some")]) == 0
    full = json.loads((tmp_path / "all" / "entropy.json").read_text())
    some = json.loads((tmp_path / "some" / "entropy.json").read_text())
    assert {"residual", "ffn"} <= set(some) and not {"attn", "attn_in", "ffn_in", "delta_ffn", "delta_attn"} & set(some)
    assert some["residual"] == full["residual"] and some["ffn"] == full["ffn"]
    assert (tmp_path / "some" / "entropy_by_layer.png").exists()
