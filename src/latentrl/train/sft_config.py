"""Config of ``latentrl sft`` (TRL / ``TrainingArguments`` names where one exists)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from latentrl.config import Config, with_defaults
from latentrl.train.args import DataArgs, OptimizerArgs, RunArgs


class TinyModelArgs(Config):
    """The model to start from: a checkpoint, or a freshly built tiny model of one of three families."""

    model_name_or_path: str | None = Field(None, description="Checkpoint dir or hub id to start from; None builds a tiny model.")
    model_family: Literal["gpt2", "llama", "qwen2"] = Field("gpt2", description="Tiny model family.")
    n_layer: int = Field(4, ge=1, description="Tiny model: layers.")
    n_embd: int = Field(128, ge=1, description="Tiny model: hidden size.")
    n_head: int = Field(4, ge=1, description="Tiny model: attention heads (must divide n_embd).")
    max_length: int = Field(128, ge=8, description="Tiny model: context length.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Tiny model: dropout in its native sites.")


class SFTConfig(DataArgs, OptimizerArgs, TinyModelArgs, RunArgs):
    """Supervised training: chain of thought, no-CoT, or the Coconut curriculum."""

    mode: Literal["cot", "nocot", "coconut"] = Field("coconut", description="cot (discrete), nocot or coconut.")
    c_thought: int = Field(1, ge=1, description="Continuous thoughts per replaced language step (c).")
    max_latent_stage: int = Field(4, ge=0, description="Last curriculum stage.")
    epochs_per_stage: int = Field(1, ge=1, description="Epochs spent at each stage.")
    start_stage: int = Field(0, ge=0, description="Stage of the first epoch (1 after a CoT run).")
    final_stage: int | None = Field(
        None, ge=0, description="Cap on the stage: later epochs stay there (None: past max, all steps latent)."
    )
    pad_latent_to_max: bool = Field(False, description="Past the last stage, pad thoughts to max.")
    uniform_prob: float = Field(0.0, ge=0, le=1, description="Chance an example uses a uniformly drawn stage.")
    reset_optimizer: bool = Field(True, description="New optimizer at each stage switch.")
    num_train_epochs: int = Field(5, ge=1, description="Epochs in all.")
    per_device_train_batch_size: int = Field(64, ge=1, description="Batch size per process.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_steps: int = Field(-1, ge=-1, description="Stop after N optimizer steps (-1: no limit; 0 is refused).")
    max_time_seconds: float | None = Field(None, gt=0, description="Stop after this much training time.")
    eval_strategy: Literal["no", "epoch"] = Field("no", description="no, or epoch: greedy validation accuracy after every epoch.")
    early_stopping_patience: int = Field(
        0, ge=0, description="Stop after N evaluations at the last stage without a better accuracy (0: off)."
    )
    load_best_model_at_end: bool = Field(
        False, description="final/ holds the best validation epoch of the last stage, not the last one."
    )

    @model_validator(mode="after")
    def _consistent(self):
        if self.max_steps == 0:
            raise ValueError("max_steps=0 would train nothing; use -1 for no limit or a positive number")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        if self.eval_strategy == "no" and (self.early_stopping_patience or self.load_best_model_at_end):
            raise ValueError("early_stopping_patience and load_best_model_at_end need eval_strategy=epoch")
        if self.load_best_model_at_end and not self.at_last_stage(self.num_train_epochs - 1):
            raise ValueError("load_best_model_at_end: the curriculum never reaches its last stage in num_train_epochs "
                             "epochs, so there is no best epoch to keep; add epochs or set final_stage")  # fmt: skip
        return self

    @property
    def thinking_mode(self) -> str:
        return {"cot": "discrete", "nocot": "nocot", "coconut": "coconut"}[self.mode]

    def stage_of(self, epoch: int) -> int:
        if self.mode != "coconut":
            return 0
        stage = self.start_stage + epoch // self.epochs_per_stage
        return stage if self.final_stage is None else min(stage, self.final_stage)

    def at_last_stage(self, epoch: int) -> bool:
        """No later epoch changes the layout (CoT/no-CoT always; Coconut once its stage is final)."""
        if self.mode != "coconut":
            return True
        if self.final_stage is not None:
            return self.stage_of(epoch) >= self.final_stage
        return self.stage_of(epoch) > self.max_latent_stage  # past max every step is latent

    def inference_latents(self, stage: int) -> int:
        """Thoughts used at inference after training at ``stage``."""
        if self.mode != "coconut":
            return 0
        return min(stage, self.max_latent_stage) * self.c_thought


with_defaults(SFTConfig, output_dir="runs/sft")

# keys whose change cannot be resumed: the checkpoints already written are of another model or layout
SFT_FIXED_ON_RESUME = ("mode", "model_name_or_path", "model_family", "n_layer", "n_embd", "n_head", "max_length", "c_thought")
