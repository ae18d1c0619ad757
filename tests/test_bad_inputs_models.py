"""Bad checkpoints and inputs fail with one-line errors that name the file, key or example at fault.

Covers ``latentrl.json`` validation, latent ids against the tokenizer and embedding table, damaged
weights, inputs longer than the context, and that our calls into transformers print no
deprecation warnings or progress bars.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from latentrl.models import (
    CheckpointError,
    IncompatibleModelError,
    ThinkingConfig,
    build_tiny_model,
    check_fits_context,
    encode_prompt,
    generate,
    latent_forward,
    load_model,
    model_context_length,
    quiet_hf,
    validate_for_tokenizer,
)
from latentrl.models.layout import METADATA_FILE, collate, encode_example
from latentrl.tasks import DataError


def tiny(family: str = "gpt2", max_length: int = 64):
    model, tok = build_tiny_model(family, n_layer=1, n_embd=32, n_head=2, max_length=max_length)
    return model.eval(), tok


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A tiny saved checkpoint (HF files, no latentrl.json) to copy and damage."""
    model, tok = tiny()
    directory = tmp_path_factory.mktemp("ckpt")
    with quiet_hf():
        model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def write_metadata(directory: Path, data) -> Path:
    path = directory / METADATA_FILE
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def coconut_fields(tok) -> dict:
    return asdict(ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=2))


# ---------------------------------------------------------------------------------------------
# latentrl.json


def test_thinking_config_round_trip_and_plain_hf_directory(tmp_path: Path) -> None:
    _, tok = tiny()
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut", thoughts_per_step=2, num_latents=3)
    cfg.save(tmp_path)
    assert ThinkingConfig.load(tmp_path) == cfg
    assert ThinkingConfig.load(tmp_path / "nothing-here") == ThinkingConfig()  # no latentrl.json: discrete


def test_older_file_without_optional_keys_loads(tmp_path: Path) -> None:
    write_metadata(tmp_path, {"thinking_mode": "discrete"})
    assert ThinkingConfig.load(tmp_path) == ThinkingConfig()


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"thinking_mode": None}, r"missing key 'thinking_mode'"),
        ({"thinking_mode": "latent"}, r"thinking_mode must be one of discrete, nocot, coconut, soft, got 'latent'"),
        ({"soft_top_k": 0}, r"soft_top_k must be an integer >= 1, got 0"),
            ({"end_of_thinking": ""}, r"end_of_thinking must be null or a non-empty token string"),
        ({"num_latents": -1}, r"num_latents must be an integer >= 0, got -1"),
        ({"num_latents": 2.0}, r"num_latents must be an integer >= 0, got 2.0"),
        ({"thoughts_per_step": 0}, r"thoughts_per_step must be an integer >= 1, got 0"),
        ({"latent_token_id": "5"}, r"latent_token_id must be a non-negative integer token id or null, got '5'"),
        ({"start_latent_token_id": True}, r"start_latent_token_id must be a non-negative integer"),
        ({"end_latent_token_id": -3}, r"end_latent_token_id must be a non-negative integer"),
        ({"curriculum_stage": -1}, r"curriculum_stage must be a non-negative integer or null"),
        ({"answer_prefix": 3}, r"answer_prefix must be a string"),
        ({"thoughts": 1}, r"unknown keys \['thoughts'\]"),
    ],
)
def test_bad_latentrl_json_names_file_and_key(tmp_path: Path, change: dict, pattern: str) -> None:
    _, tok = tiny()
    data = {**coconut_fields(tok), **change}
    data = {k: v for k, v in data.items() if not (k == "thinking_mode" and v is None)}
    path = write_metadata(tmp_path, data)
    with pytest.raises(CheckpointError, match=pattern) as info:
        ThinkingConfig.load(tmp_path)
    assert str(info.value).startswith(f"{path}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('{"thinking_mode": "coconut",', r"invalid JSON \(.* at line 1 column \d+\)"),
        ("", r"invalid JSON"),
        ('["coconut"]', r"expected a JSON object, got a list"),
        ("42", r"expected a JSON object, got a int"),
    ],
)
def test_malformed_latentrl_json(tmp_path: Path, text: str, pattern: str) -> None:
    path = write_metadata(tmp_path, text)
    with pytest.raises(CheckpointError, match=pattern) as info:
        ThinkingConfig.load(tmp_path)
    assert str(info.value).startswith(str(path))


def test_checkpoint_error_is_what_the_cli_reports() -> None:
    assert issubclass(CheckpointError, IncompatibleModelError) and issubclass(CheckpointError, ValueError)


def test_soft_is_a_mode_of_its_own() -> None:
    """Soft thinking no longer runs silently as Coconut: its prompt has no latent markers."""
    _, tok = tiny()
    from latentrl.models.layout import encode_prompt

    soft = ThinkingConfig().with_soft(tok)
    assert encode_prompt(tok, "1+2", soft) == encode_prompt(tok, "1+2", ThinkingConfig())
    assert soft.end_of_thinking_id == tok.convert_tokens_to_ids("#")


# ---------------------------------------------------------------------------------------------
# latent ids against the tokenizer and the embedding table


def test_valid_ids_pass(tmp_path: Path) -> None:
    model, tok = tiny()
    vocab = model.get_input_embeddings().num_embeddings
    for mode in ("coconut", "discrete", "nocot"):
        validate_for_tokenizer(ThinkingConfig.from_tokenizer(tok, mode), tok, vocab, tmp_path)
    validate_for_tokenizer(ThinkingConfig(), tok, vocab, tmp_path)  # discrete without ids


@pytest.mark.parametrize(
    ("mode", "key", "value", "pattern"),
    [
        ("coconut", "latent_token_id", None, r"thinking_mode 'coconut' needs latent_token_id .* got null"),
        ("coconut", "end_latent_token_id", 10_000, r"end_latent_token_id 10000 is outside the model's embedding "
                                                   r"table \(vocab_size \d+\)"),
        ("coconut", "latent_token_id", 20, r"latent_token_id 20 is 'd' in the tokenizer, not '<\|latent\|>'"),
        ("discrete", "start_latent_token_id", 5, r"start_latent_token_id 5 is '<\|latent\|>' in the tokenizer"),
        ("nocot", "latent_token_id", 999, r"latent_token_id 999 is outside"),
    ],
)  # fmt: skip
def test_bad_latent_ids(tmp_path: Path, mode: str, key: str, value, pattern: str) -> None:
    model, tok = tiny()
    cfg = ThinkingConfig.from_tokenizer(tok, mode)
    setattr(cfg, key, value)
    with pytest.raises(CheckpointError, match=pattern) as info:
        validate_for_tokenizer(cfg, tok, model.get_input_embeddings().num_embeddings, tmp_path)
    assert str(info.value).startswith(f"{tmp_path / METADATA_FILE}: ")


def test_id_beyond_a_smaller_embedding_table(tmp_path: Path) -> None:
    _, tok = tiny()
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut")  # ids 4, 5, 6
    with pytest.raises(CheckpointError, match="start_latent_token_id 4 is outside .*vocab_size 4"):
        validate_for_tokenizer(cfg, tok, 4, tmp_path)


def test_latent_markers_as_ordinary_tokens_are_rejected(tmp_path: Path) -> None:
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<|start-latent|>", "<|latent|>", "<|end-latent|>", "a"])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    cfg = ThinkingConfig("coconut", 2, 3, 4)
    with pytest.raises(CheckpointError, match=r"start_latent_token_id 2 \(<\|start-latent\|>\) is an ordinary token"):
        validate_for_tokenizer(cfg, tok, len(vocab), tmp_path)


# ---------------------------------------------------------------------------------------------
# damaged weights


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_safetensors_raise_checkpoint_error(saved: Path, tmp_path: Path, damage: str) -> None:
    ckpt = copy_checkpoint(saved, tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[damage]
    weights.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="damaged weights file") as info:
        load_model(str(ckpt))
    assert str(info.value).startswith(f"{weights}: ")
    assert "\n" not in str(info.value)


def test_non_finite_weights_raise_checkpoint_error(saved: Path, tmp_path: Path) -> None:
    ckpt = copy_checkpoint(saved, tmp_path / "ckpt")
    model, _ = load_model(str(ckpt))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    name = "transformer.h.0.mlp.c_fc.weight"
    state[name][0, 0] = float("nan")
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"weight '{name}' holds non-finite values"):
        load_model(str(ckpt))


def test_missing_weights_and_bad_config_raise_checkpoint_error(saved: Path, tmp_path: Path) -> None:
    no_weights = copy_checkpoint(saved, tmp_path / "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=f"^{no_weights}: cannot load the checkpoint"):
        load_model(str(no_weights))
    bad_config = copy_checkpoint(saved, tmp_path / "bad-config")
    (bad_config / "config.json").write_text('{"model_type": "gpt2",')
    with pytest.raises(CheckpointError, match=f"^{bad_config}: cannot load the checkpoint"):
        load_model(str(bad_config))


def test_intact_checkpoint_loads_identically(saved: Path) -> None:
    model, tok = tiny()
    loaded, loaded_tok = load_model(str(saved))
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded_tok.padding_side == "left"


# ---------------------------------------------------------------------------------------------
# inputs longer than the context


def test_model_context_length() -> None:
    assert model_context_length(tiny("gpt2", max_length=48)[0]) == 48  # n_positions
    assert model_context_length(tiny("llama", max_length=40)[0]) == 40  # max_position_embeddings
    assert model_context_length(object()) is None


def test_over_long_input_fails_deep_in_gpt2_without_the_check() -> None:
    model, _ = tiny("gpt2", max_length=16)
    with pytest.raises(IndexError), torch.no_grad():
        model(input_ids=torch.ones(1, 17, dtype=torch.long), attention_mask=torch.ones(1, 17, dtype=torch.long))


def test_check_fits_context_names_the_first_long_example() -> None:
    check_fits_context([10, 128, 3], 128, "train.jsonl")  # at the limit is fine
    check_fits_context([10_000], None, "train.jsonl")  # unknown context: nothing to check
    with pytest.raises(DataError) as info:
        check_fits_context([5, 128, 12, 300, 129], 128, "train.jsonl")
    assert str(info.value) == (
        "train.jsonl example 3: prompt + completion is 300 tokens but the model's context is 128 "
        "(max_position_embeddings); shorten it or raise max_length (1 more examples are too long)"
    )
    with pytest.raises(DataError, match=r"^test split example 0: prompt \+ max_new_tokens is 20 tokens"):
        check_fits_context([20], 16, "test split", what="prompt + max_new_tokens")


def test_check_fits_context_on_encoded_examples() -> None:
    model, tok = tiny("gpt2", max_length=16)
    cfg = ThinkingConfig.from_tokenizer(tok, "discrete")
    enc = [encode_example(tok, "1+2", ["1+2=3"], "3", cfg), encode_example(tok, "1+2*3-4", ["1+2=3"] * 3, "5", cfg)]
    with pytest.raises(DataError, match=r"^arith example 1: prompt \+ completion is \d+ tokens .* context is 16"):
        check_fits_context([len(e.ids) for e in enc], model_context_length(model), "arith")


# ---------------------------------------------------------------------------------------------
# no deprecation warnings or progress bars from our calls into transformers


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_latent_forward_and_generate_warn_nothing(family: str) -> None:
    model, tok = tiny(family)
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=2)
    prompts = [encode_prompt(tok, q, cfg) for q in ["1+2", "3*4-1"]]
    enc = [encode_example(tok, "1+2", ["1+2=3"], "3", cfg, 1, 1)]
    batch = collate(enc, tok.pad_token_id, cfg.latent_token_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        latent_forward(model, batch.input_ids, batch.attention_mask, batch.latent_mask)
        generate(
            model, prompts, latent_token_id=cfg.latent_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id, num_generations=2, max_new_tokens=4, temperature=1.0,
        )  # fmt: skip
    assert [str(w.message) for w in caught] == []


@pytest.mark.skipif(not hasattr(hf_logging, "set_tqdm_hook"), reason="transformers < 5 prints no load/save bars")
def test_load_model_and_quiet_save_print_no_progress_bars(tmp_path: Path, capsys) -> None:
    model, tok = tiny()
    hook_before = hf_logging.set_tqdm_hook(None)
    hf_logging.set_tqdm_hook(hook_before)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_hf():
            model.save_pretrained(tmp_path)
        tok.save_pretrained(tmp_path)
        load_model(str(tmp_path), dtype=torch.float32)
    out = capsys.readouterr()
    assert "Writing model shards" not in out.err + out.out
    assert "Loading weights" not in out.err + out.out
    assert [str(w.message) for w in caught] == []
    assert hf_logging.set_tqdm_hook(hook_before) is hook_before  # quiet_hf put the previous hook back
    if hf_logging.is_progress_bar_enabled():  # control: the bar does print outside quiet_hf
        model.save_pretrained(tmp_path / "loud")
        assert "Writing model shards" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), vocab=st.integers(1, 70), bad=st.sampled_from([None, "nan", "inf", "-inf"]),
       where=st.floats(0, 1, exclude_max=True), bf16=st.booleans(), steps=st.integers(1, 3))  # fmt: skip
def test_the_finite_watch_flags_exactly_what_isfinite_does(rows, vocab, bad, where, bf16, steps):
    """Generation's check of the next-token logits (one ``aminmax`` a step) against ``isfinite().all()``; it
    raises only at ``check()``, and the logits it hands on are always finite."""
    from latentrl.errors import FiniteWatch, NonFiniteError

    watch, g = FiniteWatch("cpu"), torch.Generator().manual_seed(rows * 100 + vocab)
    seen_bad = False
    for step in range(steps):
        logits = 30 * torch.randn(rows, vocab, generator=g)
        if bad is not None and step == steps - 1:
            logits.view(-1)[int(where * logits.numel())] = float(bad)
        logits = logits.bfloat16() if bf16 else logits
        seen_bad |= not bool(torch.isfinite(logits).all())
        assert torch.isfinite(watch(logits)).all()
    if seen_bad:
        with pytest.raises(NonFiniteError, match="NaN or infinite"):
            watch.check()
    else:
        watch.check()
    assert seen_bad == (bad is not None)


def test_the_finite_watch_passes_an_empty_batch():
    from latentrl.errors import FiniteWatch

    watch = FiniteWatch("cpu")
    assert watch(torch.empty(0, 7)).shape == (0, 7)
    watch.check()
