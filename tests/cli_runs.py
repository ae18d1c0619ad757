"""What several tests' ``latentrl`` runs share: a tiny model's keys, a reward that varies within a group, and a
CoT checkpoint with the keys of a short GRPO run from it.

The tests folder is on ``sys.path`` under pytest, so a run names the reward ``reward_funcs=[cli_runs:by_text]``;
a subprocess needs the folder on its ``PYTHONPATH`` (``TESTS``).
"""

from __future__ import annotations

import zlib
from pathlib import Path

from latentrl.cli import main

TESTS = Path(__file__).resolve().parent
TINY = ["n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=96", "per_device_train_batch_size=16",
        "disable_tqdm=true", "task_kwargs={num_steps: 2}", "logging_steps=1"]  # fmt: skip
BY_TEXT = "reward_funcs=[cli_runs:by_text]"


def by_text(prompts, completions, **kw):
    """0, 0.5 or 1 from a hash of the completion's text. An untrained policy rarely gets an answer right, so
    answer rewards would leave every group without variance (no gradient); these vary within a group."""
    return [zlib.crc32(c.encode()) % 3 / 2 for c in completions]


def grpo_from_a_cot_checkpoint(tmp_path: Path, max_completion_length: int) -> tuple[Path, list[str]]:
    """A tiny CoT checkpoint and the keys of a 2-step GRPO run from it, rewarded by :func:`by_text`:
    ``(sft folder, grpo keys)``; later keys given on the command line win."""
    sft = tmp_path / "sft"
    assert main(["sft", f"output_dir={sft}", *TINY, "mode=cot", "num_train_epochs=1", "save_steps=0"]) == 0
    return sft, [f"model_name_or_path={sft / 'final'}", "num_generations=4", "generation_batch_size=8",
                 "per_device_train_batch_size=8", f"max_completion_length={max_completion_length}",
                 "task_kwargs={num_steps: 2}", "disable_tqdm=true", "max_steps=2", "save_steps=0", "exploration=none",
                 BY_TEXT]  # fmt: skip
