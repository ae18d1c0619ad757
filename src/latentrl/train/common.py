"""What every trainer shares: logging, checkpoint discovery, seeding, the model to start from."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

from latentrl.models import build_tiny_model, check_latent_support, load_checkpoint
from latentrl.models.build import add_latent_tokens
from latentrl.models.layout import ThinkingConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class RunLogger:
    """JSONL always (``log.jsonl``, appended, so a resumed run continues it); TensorBoard when asked."""

    def __init__(self, output_dir: str | Path, report_to: list[str], enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "log.jsonl"
        self.tb = None
        if enabled and "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:  # pragma: no cover - depends on the install
                raise RuntimeError("report_to includes 'tensorboard' but tensorboard is not installed") from err
            self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` directories of a run, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*")
             if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]  # fmt: skip
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint-<step>`` directory with the highest step, or None."""
    found = checkpoints(output_dir)
    return found[-1] if found else None


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` ``checkpoint-<step>`` directories."""
    import shutil

    found = checkpoints(output_dir)
    for p in found[: max(0, len(found) - keep)]:
        shutil.rmtree(p)


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
    return model, tokenizer, thinking


def validation_examples(task: str, n: int, seed: int, task_kwargs: dict, eval_data_path: str | None):
    """Problems of a trainer's periodic evaluation: the validation split of a synthetic task, or
    ``eval_data_path`` for a file format (the test split stays for the final evaluation)."""
    from latentrl.tasks import FILE_FORMATS, load_examples

    if task in FILE_FORMATS:
        if not eval_data_path:
            raise ValueError(f"periodic evaluation on the file task {task!r} needs eval_data_path (a validation file)")
        return load_examples(task, n=n, path=eval_data_path, **task_kwargs)
    return load_examples(task, "validation", n, seed, **task_kwargs)


def validation_accuracy(model, tokenizer, thinking, examples, accelerator, max_new_tokens: int = 64) -> float:
    """Greedy accuracy on ``examples``, computed by the main process and shared with the others."""
    from latentrl.eval.evaluate import greedy_accuracy

    accuracy = [greedy_accuracy(model, tokenizer, thinking, examples, max_new_tokens) if accelerator.is_main_process else 0.0]
    if accelerator.num_processes > 1:
        torch.distributed.broadcast_object_list(accuracy, src=0)
    return float(accuracy[0])


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def average_gradients(model: torch.nn.Module, accelerator) -> None:
    """All-reduce (mean) the gradients over processes, as DDP would; a no-op on one process.

    The latent forward calls the model many times per backward, which DDP's hooks do not allow,
    so the trainers keep the bare model and synchronise here. A process that had nothing to
    back-propagate (no rows) takes part with zeros; a parameter that no process gave a gradient
    keeps ``grad=None``, as it would on one process.
    """
    if accelerator.num_processes == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    present = torch.tensor([float(p.grad is not None) for p in params], device=accelerator.device)
    torch.distributed.all_reduce(present, op=torch.distributed.ReduceOp.MAX)
    for p, anywhere in zip(params, present.tolist()):
        if anywhere:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.AVG)


def sum_over_processes(values: list[float], accelerator) -> list[float]:
    """Element-wise sum of a list of numbers over processes (each process passes the same length)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()


def mean_over_processes(metrics: dict[str, float], accelerator, weight: float = 1.0) -> dict[str, float]:
    """Each metric averaged over the processes that report it, weighted by ``weight`` (e.g. the
    number of rows behind this process's values); a process may lack some keys."""
    if accelerator is None or accelerator.num_processes == 1:
        return metrics
    everyone: list = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(everyone, (metrics, float(weight)))
    out = {}
    for k in dict.fromkeys(k for m, _ in everyone for k in m):
        pairs = [(m[k], w) for m, w in everyone if k in m]
        total = sum(w for _, w in pairs)
        out[k] = sum(v * w for v, w in pairs) / total if total > 0 else float(np.mean([v for v, _ in pairs]))
    return out
