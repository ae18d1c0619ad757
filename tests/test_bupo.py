"""BuPO: optimising an internal layer's policy. The read-out at layer L with the final norm is the full
policy; in discrete mode phase 1 sends gradient only to the layers up to l; bupo_steps=0 is plain GRPO;
the switch is logged and a run resumes across it; bad layers and modules are clear errors."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from latentrl.cli import main
from latentrl.exploration import NoExploration
from latentrl.models import ThinkingConfig, build_tiny_model
from latentrl.models.layout import encode_prompt
from latentrl.models.readout import PolicyHead, ReadoutTap
from latentrl.models.thinking import thinking_mode
from latentrl.rollout import completion_logps
from latentrl.tasks import load_examples

from cli_runs import BY_TEXT

TINY = ["n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=64", "per_device_train_batch_size=32",
        "disable_tqdm=true", "task_kwargs={num_steps: 2}", "num_train_epochs=1", "save_steps=0"]  # fmt: skip


def rollout_of(model, tok):
    prompts = [encode_prompt(tok, ex.question, ThinkingConfig()) for ex in load_examples("arith", "test", 3, 0, num_steps=2)]
    return thinking_mode("discrete").generate(model, prompts, ThinkingConfig(), exploration=NoExploration(),
                                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                              max_new_tokens=6)  # fmt: skip


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_layer_L_with_the_final_norm_is_the_full_policy(family):
    model, tok = build_tiny_model(family=family, n_layer=3, n_embd=32, n_head=2, seed=3)
    gen = rollout_of(model.eval(), tok)
    with torch.no_grad():
        full = completion_logps(model, gen, NoExploration()).logps
        last = completion_logps(model, gen, NoExploration(), head=PolicyHead(3, "residual", True)).logps
        lower = completion_logps(model, gen, NoExploration(), head=PolicyHead(1)).logps
    mask = gen.completion_mask.bool()
    torch.testing.assert_close(last[mask], full[mask], atol=1e-6, rtol=0)
    assert not torch.allclose(lower[mask], full[mask])


@pytest.mark.parametrize(("family", "final_norm"), [("gpt2", False), ("llama", False), ("gpt2", True)])
def test_phase_1_gradient_reaches_only_the_layers_up_to_l(family, final_norm):
    model, tok = build_tiny_model(family=family, n_layer=3, n_embd=32, n_head=2, seed=4)
    gen = rollout_of(model.eval(), tok)
    logps = completion_logps(model, gen, NoExploration(), head=PolicyHead(2, "residual", final_norm)).logps
    (-(logps * gen.completion_mask).sum()).backward()
    blocks = model.transformer.h if family == "gpt2" else model.model.layers
    norm = model.transformer.ln_f if family == "gpt2" else model.model.norm
    nonzero = lambda m: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())  # noqa: E731
    assert nonzero(blocks[0]) and nonzero(blocks[1]) and nonzero(model.get_input_embeddings())
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in blocks[2].parameters())  # above l: exactly 0
    assert nonzero(norm) == final_norm


def test_a_module_the_block_lacks_is_named():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = torch.nn.Linear(4, 4)

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"num_hidden_layers": 2})()
            self.layers = torch.nn.ModuleList([Block(), Block()])

    with pytest.raises(ValueError, match="bupo_module='attn'.*has no such module"):
        ReadoutTap(Toy(), PolicyHead(1, "attn"))
    with pytest.raises(ValueError, match="bupo_layer=3 is outside"):
        ReadoutTap(Toy(), PolicyHead(3))


@pytest.fixture(scope="module")
def cot(tmp_path_factory):
    out = tmp_path_factory.mktemp("bupo") / "cot"
    assert main(["sft", f"output_dir={out}", *TINY, "mode=cot"]) == 0
    return out / "final"


def grpo(cot, out, *extra):
    return main(["grpo", f"output_dir={out}", f"model_name_or_path={cot}", "num_generations=4", "generation_batch_size=8",
                 "per_device_train_batch_size=8", "max_completion_length=8", "task_kwargs={num_steps: 2}",
                 "disable_tqdm=true", "exploration=none", BY_TEXT, "learning_rate=1e-3",
                 *extra])  # fmt: skip


def weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_bupo_steps_0_is_plain_grpo_and_a_run_resumes_across_the_switch(cot, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    assert grpo(cot, tmp_path / "plain", "max_steps=2", "save_steps=0") == 0
    assert grpo(cot, tmp_path / "zero", "max_steps=2", "save_steps=0", "bupo_layer=1", "bupo_steps=0") == 0
    a, b = weights(tmp_path / "plain" / "final"), weights(tmp_path / "zero" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    bupo = ["bupo_layer=1", "bupo_steps=2", "save_steps=1"]
    assert grpo(cot, tmp_path / "full", "max_steps=3", *bupo) == 0
    log = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["bupo/layer"] for r in log] == [1, 1, 0]  # the switch to the full policy after step 2
    c = weights(tmp_path / "full" / "final")
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert grpo(cot, tmp_path / "cut", "max_steps=2", *bupo) == 0
    assert grpo(cot, tmp_path / "cut", "max_steps=3", *bupo, "resume_from_checkpoint=true") == 0
    d = weights(tmp_path / "cut" / "final")
    assert all(torch.equal(c[k], d[k]) for k in c)


@pytest.mark.parametrize("mode", [["thinking_mode=soft", "exploration=gumbel"], ["bupo_module=ffn", "bupo_final_norm=true"]])
def test_bupo_with_soft_thinking_and_module_policies(cot, tmp_path, monkeypatch, mode):
    monkeypatch.syspath_prepend(str(tmp_path))
    extra = [m for m in mode if not m.startswith("exploration")]
    exploration = [m for m in mode if m.startswith("exploration")]
    args = ["max_steps=1", "save_steps=0", "bupo_layer=1", "bupo_steps=1", *extra]
    assert grpo(cot, tmp_path / "run", *args, *exploration) == 0
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])["bupo/layer"] == 1


@pytest.mark.parametrize(("extra", "message"), [(["bupo_layer=99", "bupo_steps=1"], "bupo_layer=99 is outside"),
                                                (["bupo_layer=1", "bupo_steps=5"], "bupo_steps=5 is larger than max_steps"),
                                                (["bupo_steps=1"], "bupo_steps needs bupo_layer")])  # fmt: skip
def test_bad_bupo_input_is_one_clear_error(cot, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.syspath_prepend(str(tmp_path))
    assert grpo(cot, tmp_path / "bad", "max_steps=2", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_in_coconut_mode_phase_1_reaches_upper_layers_through_the_thoughts():
    """A continuous thought is a last-layer state fed back as input, so layer l's read-out of later
    positions depends on every layer: the upper blocks get gradient in phase 1 (README: BuPO)."""
    model, tok = build_tiny_model(n_layer=3, n_embd=32, n_head=2, seed=5)
    thinking = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=2)
    prompts = [encode_prompt(tok, ex.question, thinking) for ex in load_examples("arith", "test", 2, 0, num_steps=2)]
    gen = thinking_mode("coconut").generate(model.eval(), prompts, thinking, exploration=NoExploration(),
                                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_new_tokens=6)  # fmt: skip
    logps = completion_logps(model, gen, NoExploration(), head=PolicyHead(1)).logps
    (-(logps * gen.completion_mask).sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.transformer.h[2].parameters())
