"""What both trainers need besides the run skeleton: the starting model, validation data and
accuracy, and the collectives of several processes (accelerate's)."""

from __future__ import annotations

from contextlib import ExitStack, nullcontext

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, gather_object, reduce
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from latentrl.models import build_tiny_model, check_latent_support, load_checkpoint
from latentrl.models.build import add_latent_tokens, ban_layout_tokens
from latentrl.models.layout import ThinkingConfig
from latentrl.train.run import read_log  # noqa: F401  (re-exported: scripts read logs through here)

# A pass whose backward follows, on a CPU under bf16 / fp16 autocast, runs SDPA's math backend while the
# attention weights it keeps for the backward (B x heads x L x L per layer) stay below this many elements:
# torch's CPU flash-attention backward is several times slower in bf16 than in float32 (SmolLM2, 30 layers at
# 64 rows x 72 positions: 3.4 s against 0.4 s); the math backend, which computes the attention in float32 on a
# CPU, takes the whole backward from 11.8 to 7.6 s there. Past the bound the weights' memory would outgrow the
# gain: flash attention stays.
MATH_ATTENTION_MAX_ELEMENTS = 1 << 26


def autocast(accelerator, model=None, shape: tuple[int, int] | None = None):
    """accelerate's autocast (``mixed_precision``), or nothing without an accelerator. ``model`` and ``shape``
    (``[B, L]`` of the pass) for a pass whose backward follows: on a CPU under reduced precision, SDPA's math
    backend too while its weights are small (:data:`MATH_ATTENTION_MAX_ELEMENTS`)."""
    if accelerator is None:
        return nullcontext()
    stack = ExitStack()
    stack.enter_context(accelerator.autocast())
    if model is not None and math_attention(accelerator, model, shape):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    return stack


def math_attention(accelerator, model, shape: tuple[int, int]) -> bool:
    """Whether a pass of ``shape`` with a backward runs SDPA's math backend (see :func:`autocast`)."""
    B, L = shape
    heads = getattr(model.config, "num_attention_heads", 1)
    return (accelerator.device.type == "cpu" and accelerator.mixed_precision in ("bf16", "fp16")
            and B * heads * L * L <= MATH_ATTENTION_MAX_ELEMENTS)  # fmt: skip


def load_or_build(model_name_or_path: str | None, tiny: dict, seed: int):
    """``(model, tokenizer, thinking)``: a checkpoint / hub model, or a fresh tiny model.

    The model is checked for what continuous thoughts need, and the latent tokens are added
    when the tokenizer lacks them.
    """
    if model_name_or_path:
        model, tokenizer, thinking = load_checkpoint(model_name_or_path)
    else:
        model, tokenizer = build_tiny_model(seed=seed, **tiny)
        thinking = ThinkingConfig()
    check_latent_support(model)
    add_latent_tokens(model, tokenizer)
    ban_layout_tokens(model, tokenizer)
    return model, tokenizer, thinking


def validation_examples(cfg) -> list:
    """Problems of a trainer's periodic evaluation: the validation split of a synthetic task, or
    ``eval_data_path`` for a file format (the test split stays for the final evaluation)."""
    from latentrl.tasks import FILE_FORMATS, load_examples

    if cfg.task in FILE_FORMATS:
        if not cfg.eval_data_path:
            raise ValueError(f"periodic evaluation on the file task {cfg.task!r} needs eval_data_path (a validation file)")
        return load_examples(cfg.task, n=cfg.eval_n, path=cfg.eval_data_path, **cfg.task_kwargs)
    return load_examples(cfg.task, "validation", cfg.eval_n, cfg.problems_seed(), **cfg.task_kwargs)


def train_examples(cfg) -> list:
    """The training problems (SFT: demonstrations; GRPO: the prompt pool)."""
    from latentrl.tasks import load_examples

    return load_examples(cfg.task, "train", cfg.num_train_examples, cfg.problems_seed(), cfg.data_path, **cfg.task_kwargs)


def validation_accuracy(model, tokenizer, thinking, examples, accelerator, max_new_tokens: int = 64) -> float:
    """Greedy accuracy on ``examples``, computed by the main process and shared with the others."""
    from latentrl.eval.evaluate import greedy_accuracy

    accuracy = [greedy_accuracy(model, tokenizer, thinking, examples, max_new_tokens) if accelerator.is_main_process else 0.0]
    if accelerator.num_processes > 1:
        broadcast_object_list(accuracy, from_process=0)
    return float(accuracy[0])


def average_gradients(model: torch.nn.Module, accelerator) -> None:
    """Mean of the gradients over processes, as DDP would; a no-op on one process.

    The latent forward calls the model many times per backward, which DDP's hooks do not allow,
    so the trainers keep the bare model and synchronise here, in one all-reduce of a flat buffer.
    A process that had nothing to back-propagate takes part with zeros; a parameter that no process
    gave a gradient keeps ``grad=None``, as it would on one process.
    """
    if accelerator.num_processes == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    present = torch.tensor([float(p.grad is not None) for p in params], device=accelerator.device)
    present = reduce(present, "max").bool().tolist()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p, anywhere in zip(params, present) if anywhere]
    flat = reduce(_flatten_dense_tensors(grads), "mean")
    for p, g in zip([p for p, anywhere in zip(params, present) if anywhere], _unflatten_dense_tensors(flat, grads)):
        p.grad = g


def sum_over_processes(values: list[float], accelerator) -> list[float]:
    """Element-wise sum of a list of numbers over processes (each process passes the same length)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [float(v) for v in values]
    return reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum").cpu().tolist()


def mean_over_processes(metrics: dict[str, float], accelerator, weight: float = 1.0) -> dict[str, float]:
    """Each metric averaged over the processes that report it, weighted by ``weight`` (e.g. the
    number of rows behind this process's values); a process may lack some keys."""
    if accelerator is None or accelerator.num_processes == 1:
        return metrics
    everyone = gather_object([(metrics, float(weight))])
    out = {}
    for k in dict.fromkeys(k for m, _ in everyone for k in m):
        pairs = [(m[k], w) for m, w in everyone if k in m]
        total = sum(w for _, w in pairs)
        out[k] = sum(v * w for v, w in pairs) / total if total > 0 else float(np.mean([v for v, _ in pairs]))
    return out
