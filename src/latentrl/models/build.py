"""Load or build a Hugging Face causal LM and make it ready for latent thinking."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    Qwen2Config,
)
from transformers.utils import logging as hf_logging

from latentrl.models.activations import use_fused_gelu
from latentrl.models.attention import use_decode_attention
from latentrl.models.tokenizer import LATENT_TOKENS, build_char_tokenizer

MODEL_FAMILIES = ("gpt2", "llama", "qwen2")


class IncompatibleModelError(ValueError):
    """The model cannot run latent thinking (no ``inputs_embeds`` or no hidden states)."""


class CheckpointError(IncompatibleModelError):
    """A damaged or invalid checkpoint: unreadable weights, config or tokenizer files, or a bad
    ``latentrl.json``. The message names the file and, where there is one, the key at fault.

    A subclass of :class:`IncompatibleModelError` (hence a ``ValueError``), so whatever reports
    an incompatible model in one line reports a damaged checkpoint the same way.
    """


@contextmanager
def quiet_hf() -> Iterator[None]:
    """Silence transformers' progress bars ("Loading weights", "Writing model shards") inside the block.

    Uses a tqdm hook (transformers >= 5), so the global enable/disable switch of transformers and of
    huggingface_hub (and its ``HF_HUB_DISABLE_PROGRESS_BARS`` setting) is left untouched; the previous
    hook comes back on exit. Older transformers have only the global switch, set back on exit.
    Wrap ``save_pretrained`` with it too.
    """
    if not hasattr(hf_logging, "set_tqdm_hook"):  # transformers < 5: only the global switch exists
        enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if enabled:
                hf_logging.enable_progress_bar()
        return
    previous = hf_logging.set_tqdm_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


def tiny_config(family: str, vocab_size: int, n_layer: int, n_embd: int, n_head: int, max_length: int, dropout: float):
    """A small HF config of one of ``MODEL_FAMILIES`` (dropout applies where the family has it)."""
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=max_length, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=1, eos_token_id=2,
            pad_token_id=0,
        )  # fmt: skip
    common = dict(
        vocab_size=vocab_size, hidden_size=n_embd, intermediate_size=4 * n_embd, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_head, max_position_embeddings=max_length,
        attention_dropout=dropout, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
    )  # fmt: skip
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"unknown model family {family!r}; choose one of {MODEL_FAMILIES}")


def build_tiny_model(
    family: str = "gpt2", n_layer: int = 4, n_embd: int = 128, n_head: int = 4, max_length: int = 256,
    dropout: float = 0.0, seed: int = 0, tokenizer=None, thought_scale_init: bool = True,
):  # fmt: skip
    """A freshly initialised model with the character tokenizer (latent tokens included).

    With ``thought_scale_init`` the input embeddings are untied from the output head and drawn at
    unit scale, N(0, 1) (GPT-2's position table at N(0, 0.5^2), keeping its usual ratio to the token
    table). A continuous thought is the last hidden state after the final norm, of unit RMS; with HF's
    default N(0, 0.02^2) embeddings every thought would be ~50x larger than a token embedding, the
    blocks' updates would barely move it, and a chain of thoughts would stay close to its first one.
    """
    tokenizer = tokenizer or build_char_tokenizer()
    config = tiny_config(family, len(tokenizer), n_layer, n_embd, n_head, max_length, dropout)
    if thought_scale_init:
        config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if thought_scale_init:
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, 1.0)
            positions = getattr(getattr(model, "transformer", None), "wpe", None)
            if positions is not None:
                positions.weight.normal_(0.0, 0.5)
    ban_layout_tokens(model, tokenizer)
    use_fast_kernels(model)
    return model, tokenizer


def use_fast_kernels(model: PreTrainedModel) -> None:
    """What every model latentrl builds or loads runs with: one-position attention on a CPU
    (``latentrl.models.attention``) and GELU as one fused op (``latentrl.models.activations``). Both compute the
    model's own function within float rounding, and neither is written to ``config.json``."""
    use_decode_attention(model)
    use_fused_gelu(model)


def _first_line(err: BaseException) -> str:
    """``"TypeName: first line of the message"``, for one-line error reports."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def check_weight_files(directory: str | os.PathLike) -> None:
    """Open the header of every ``*.safetensors`` file of a local checkpoint directory.

    safetensors checks on open that the header parses and that the tensors it lists cover the file
    exactly, so a truncated file, random bytes or a damaged header fail here, naming the file.
    """
    for path in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: damaged weights file ({_first_line(err)})") from err


def check_finite_weights(model: PreTrainedModel, where: str) -> None:
    """Raise :class:`CheckpointError` naming the first parameter holding NaN or inf (damaged bytes
    inside an intact file, or a run that diverged before it was saved)."""
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param).all()):
            raise CheckpointError(f"{where}: weight {name!r} holds non-finite values (NaN/inf); the checkpoint is "
                                  "damaged or its training diverged")  # fmt: skip


def load_model(name_or_path: str, dtype: torch.dtype | None = None):
    """Load a model and tokenizer from a local directory or a hub id (the hub only when named).

    For a local directory, any failure to read its files (damaged ``*.safetensors``, config or
    tokenizer files, weights that do not fit the config) raises :class:`CheckpointError` naming
    the directory or file; hub errors propagate unchanged. Progress bars are silenced.
    """
    local = Path(name_or_path).expanduser().is_dir()
    if local:
        check_weight_files(Path(name_or_path).expanduser())
    try:
        with quiet_hf():
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except torch.cuda.OutOfMemoryError:  # a RuntimeError, but no fault of the checkpoint
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, EOFError) as err:
        if not local or isinstance(err, IncompatibleModelError):
            raise
        raise CheckpointError(f"{name_or_path}: cannot load the checkpoint ({_first_line(err)})") from err
    if local:
        check_finite_weights(model, str(name_or_path))
    use_fast_kernels(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def add_latent_tokens(model: PreTrainedModel, tokenizer, init_from: str | None = None) -> None:
    """Add the three Coconut markers to a tokenizer that lacks them and grow the embeddings.

    New rows are initialised from the embedding of ``init_from`` (a token of the vocabulary; the
    reference uses ``"<<"``) or, by default, from the embedding of the EOS token.
    """
    missing = [t for t in LATENT_TOKENS if t not in tokenizer.get_vocab()]
    if not missing:
        return
    tokenizer.add_special_tokens({"additional_special_tokens": missing})
    model.resize_token_embeddings(len(tokenizer))
    src = tokenizer.eos_token_id if init_from is None else tokenizer.convert_tokens_to_ids(init_from)
    with torch.no_grad():
        for tok in missing:
            i = tokenizer.convert_tokens_to_ids(tok)
            model.get_input_embeddings().weight[i] = model.get_input_embeddings().weight[src]
            head = model.get_output_embeddings()
            if head is not None and head.weight is not model.get_input_embeddings().weight:
                head.weight[i] = head.weight[src]


NEVER_SAMPLED_LOGIT = -1e4  # exp(-1e4 - lse) is exactly 0 in fp32; finite, so entropies and the NaN watch stay well defined


def never_sampled_ids(model: torch.nn.Module) -> tuple[int, ...]:
    """The token ids :func:`ban_layout_tokens` removed from ``model``'s policy."""
    return getattr(model, "_latentrl_never_sampled", ())


def ban_layout_tokens(model: PreTrainedModel, tokenizer) -> None:
    """Make the Coconut markers impossible as generated tokens, in every forward of ``model``.

    The layout places them in prompts; they are never actions. Added to a pretrained model they start as
    copies of another row (EOS by default), and with tied embeddings they then score exactly as EOS does, so
    a sampler would pick a marker instead of stopping. A hook on the LM head sets their logits to
    ``NEVER_SAMPLED_LOGIT`` (in place: the head's matmul does not keep its output for the backward), so
    generation, the log-prob recomputation and SFT all see the same policy over the rest of the vocabulary.
    """
    ids = tuple(i for i in tokenizer.convert_tokens_to_ids(list(LATENT_TOKENS)) if i is not None and i != tokenizer.unk_token_id)
    head = model.get_output_embeddings()
    if not ids or head is None or never_sampled_ids(model) == ids:
        return
    index = torch.tensor(ids)

    def hook(module, args, logits):
        return logits.index_fill_(-1, index.to(logits.device), NEVER_SAMPLED_LOGIT)

    head.register_forward_hook(hook)
    model._latentrl_never_sampled = ids


def check_latent_support(model: PreTrainedModel) -> None:
    """Raise :class:`IncompatibleModelError` unless the model takes ``inputs_embeds`` and returns
    last-layer hidden states of the embedding width (what a continuous thought needs)."""
    name = type(model).__name__
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(embed, torch.nn.Embedding):
        raise IncompatibleModelError(f"{name} has no input embedding table (get_input_embeddings)")
    try:
        with torch.no_grad():
            x = embed.weight[:1][None]  # [1, 1, D]
            out = model(inputs_embeds=x, output_hidden_states=True)
    except Exception as err:  # noqa: BLE001 - any failure here means the model cannot do it
        raise IncompatibleModelError(f"{name} cannot run a forward from inputs_embeds: {err}") from err
    hidden = getattr(out, "hidden_states", None)
    if not hidden:
        raise IncompatibleModelError(f"{name} returns no hidden_states (output_hidden_states=True)")
    if hidden[-1].shape[-1] != embed.embedding_dim:
        raise IncompatibleModelError(
            f"{name}: last hidden state has width {hidden[-1].shape[-1]} but the input embeddings "
            f"{embed.embedding_dim}; a continuous thought cannot be fed back"
        )


def model_family(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", "unknown")


__all__ = [
    "MODEL_FAMILIES", "CheckpointError", "IncompatibleModelError", "add_latent_tokens", "build_tiny_model",
    "check_finite_weights", "check_latent_support", "check_weight_files", "load_model", "model_family", "quiet_hf",
    "tiny_config",
]  # fmt: skip
