"""Field groups shared by the training commands, each field declared once (type, range, help).

``SFTConfig`` and ``GRPOConfig`` are made of these groups plus their own fields; where a command's
natural default differs (GRPO's learning rate is not SFT's) it says so with ``with_defaults``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from latentrl.config import Config

ReportTo = Literal["jsonl", "tensorboard", "wandb"]
SchedulerName = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                        "inverse_sqrt"]  # fmt: skip
MixedPrecision = Literal["no", "fp16", "bf16"]


def check_task(task: str, knobs: dict) -> None:
    """Raise DataError for an unknown task or knob, or a knob value out of range (reads no data)."""
    from latentrl.tasks import FILE_FORMATS, load_examples
    from latentrl.tasks.base import resolve_knobs
    from latentrl.tasks.files import FILE_KNOBS

    if task in FILE_FORMATS:
        resolve_knobs(task, FILE_KNOBS, knobs)
    else:
        load_examples(task, "validation", 0, 0, **knobs)  # zero problems: only the task and its knobs are checked


class RunArgs(Config):
    """Where a run lives and how it reports, saves and resumes."""

    output_dir: str = Field("runs/run", min_length=1, description="Where checkpoints and logs go.")
    overwrite_output_dir: bool = Field(
        False, description="Start over in an output_dir that holds a run: its checkpoints, logs and config are deleted."
    )
    resume_from_checkpoint: bool | str | None = Field(
        None,
        description="Continue from the newest checkpoint (true) or this checkpoint-<step> folder even though the "
                    "config changed; the new config is recorded beside the old one.",
    )  # fmt: skip
    seed: int = Field(0, description="Seed of initialisation, data order and sampling.")
    mixed_precision: MixedPrecision = Field("no", description="Autocast of forward passes: no, fp16 or bf16.")
    logging_steps: int = Field(10, ge=1, description="Log every N optimizer steps (the mean over those steps).")
    save_steps: int = Field(200, ge=0, description="Checkpoint every N optimizer steps (0: only where the run must).")
    save_total_limit: int = Field(2, ge=1, description="checkpoint-<step> folders kept (oldest deleted first).")
    report_to: list[ReportTo] = Field(["jsonl"], description="Trackers: jsonl (always written), tensorboard, wandb.")
    disable_tqdm: bool = Field(False, description="No progress bars.")

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value: list[str]) -> list[str]:
        import importlib.util

        modules = {"tensorboard": "tensorboard", "wandb": "wandb"}
        missing = [t for t in value if t in modules and importlib.util.find_spec(modules[t]) is None]
        if missing:
            raise ValueError(f"report_to names {missing} but the package is not installed (pip install {' '.join(missing)})")
        return value


class OptimizerArgs(Config):
    """AdamW and its learning-rate schedule (``transformers.get_scheduler``)."""

    learning_rate: float = Field(1e-3, ge=0, description="AdamW learning rate (0 freezes the weights).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    lr_scheduler_type: SchedulerName = Field("constant", description="transformers scheduler name.")
    warmup_steps: int = Field(0, ge=0, description="Warm-up steps of the scheduler.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0: no clipping).")


class DataArgs(Config):
    """The task, its training problems and the validation problems of periodic evaluation."""

    task: str = Field("arith", description="Task name (latentrl.tasks) or file format.")
    data_path: str | None = Field(None, description="Training file for file formats.")
    task_kwargs: dict[str, int | float | str] = Field({}, description="Generator knobs, e.g. {num_steps: 4}.")
    num_train_examples: int | None = Field(20000, ge=1, description="Training problems (synthetic: generated).")
    data_seed: int | None = Field(None, description="Seed of the problems drawn (None: seed).")
    eval_n: int = Field(500, ge=1, description="Validation problems (synthetic tasks: the validation split).")
    eval_data_path: str | None = Field(None, description="Validation file for file formats.")

    @model_validator(mode="after")
    def _task_exists(self):
        check_task(self.task, self.task_kwargs)
        from latentrl.tasks import FILE_FORMATS

        if self.task not in FILE_FORMATS and (self.data_path or self.eval_data_path):
            raise ValueError(f"task {self.task!r} is generated: drop data_path / eval_data_path")
        return self

    def problems_seed(self) -> int:
        """The seed the problems are drawn with."""
        return self.seed if self.data_seed is None else self.data_seed  # type: ignore[attr-defined]
