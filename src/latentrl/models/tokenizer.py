"""A character-level Hugging Face tokenizer for the synthetic tasks.

Every character is one token, so numbers are read digit by digit and decoding is exact
(no spaces are inserted). The three Coconut markers are special tokens. The result is a
``PreTrainedTokenizerFast``: it saves with ``save_pretrained`` and loads with plain
``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
START_LATENT, LATENT, END_LATENT = "<|start-latent|>", "<|latent|>", "<|end-latent|>"
LATENT_TOKENS = (START_LATENT, LATENT, END_LATENT)

# Printable ASCII covers every synthetic task and most English text.
DEFAULT_CHARSET = string.digits + string.ascii_letters + string.punctuation + " \n"


def build_char_tokenizer(extra_text: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """Build the tokenizer: specials, then printable ASCII, then any other character in ``extra_text``."""
    chars = list(DEFAULT_CHARSET)
    seen = set(chars)
    for text in extra_text:
        for ch in text:
            if ch not in seen:
                seen.add(ch)
                chars.append(ch)
    specials = [PAD, BOS, EOS, UNK, *LATENT_TOKENS]
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=list(LATENT_TOKENS),
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    return tok
