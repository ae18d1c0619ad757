"""Supervised training: chain of thought (``discrete``), no-CoT, and the Coconut curriculum.

``latentrl sft --config FILE [key=value ...]``. The loop, top to bottom:

1. resolve the config; build or load the model; resume from the newest checkpoint if any
2. for each epoch: pick the curriculum stage; at a stage switch, reset the optimizer
3. encode the epoch's examples for the stage; iterate shuffled batches (seeded by epoch)
4. latent forward, cross-entropy on the completion, backward, optimizer step (accelerate)
5. log every ``logging_steps``; checkpoint every ``save_steps``, at each stage end and at the end
6. with ``eval_strategy="epoch"``: greedy accuracy on validation problems after every epoch; once
   the curriculum has reached its last stage, keep the best epoch in ``best/`` and stop after
   ``early_stopping_patience`` epochs without improvement ("trained to its plateau")
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from latentrl.config import save_config
from latentrl.models import collate, latent_forward, load_checkpoint, save_checkpoint
from latentrl.models.checkpoint import load_trainer_state
from latentrl.models.layout import ThinkingConfig, encode_example, stage_plan
from latentrl.tasks import load_examples
from latentrl.train import common


@dataclass
class SFTConfig:
    """Config of ``latentrl sft``. Names follow TRL / ``TrainingArguments`` where one exists."""

    output_dir: str = field(default="runs/sft", metadata={"help": "Where checkpoints and logs go."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint dir or hub id to start from; None builds a tiny model."}
    )
    model_family: str = field(default="gpt2", metadata={"help": "Tiny model family: gpt2, llama or qwen2."})
    n_layer: int = field(default=4, metadata={"help": "Tiny model: layers."})
    n_embd: int = field(default=128, metadata={"help": "Tiny model: hidden size."})
    n_head: int = field(default=4, metadata={"help": "Tiny model: attention heads."})
    max_length: int = field(default=128, metadata={"help": "Tiny model: context length."})
    dropout: float = field(default=0.0, metadata={"help": "Tiny model: dropout in its native sites."})
    task: str = field(default="arith", metadata={"help": "Task name (latentrl.tasks) or file format."})
    data_path: str | None = field(default=None, metadata={"help": "Training file for file formats."})
    task_kwargs: dict[str, int | float | str] = field(
        default_factory=dict, metadata={"help": "Generator knobs, e.g. {num_steps: 4}."}
    )
    num_train_examples: int | None = field(default=20000, metadata={"help": "Examples (synthetic: generated)."})
    mode: str = field(default="coconut", metadata={"help": "cot (discrete), nocot or coconut."})
    c_thought: int = field(default=1, metadata={"help": "Continuous thoughts per replaced language step (c)."})
    max_latent_stage: int = field(default=4, metadata={"help": "Last curriculum stage."})
    epochs_per_stage: int = field(default=1, metadata={"help": "Epochs spent at each stage."})
    start_stage: int = field(default=0, metadata={"help": "Stage of the first epoch (1 after a CoT run)."})
    final_stage: int | None = field(
        default=None, metadata={"help": "Cap on the stage: later epochs stay there (None: past max, all steps latent)."}
    )
    pad_latent_to_max: bool = field(default=False, metadata={"help": "Past the last stage, pad thoughts to max."})
    uniform_prob: float = field(default=0.0, metadata={"help": "Chance an example uses a uniformly drawn stage."})
    reset_optimizer: bool = field(default=True, metadata={"help": "New optimizer at each stage switch."})
    num_train_epochs: int = field(default=5, metadata={"help": "Epochs in all."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name."})
    warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps of the scheduler."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N optimizer steps."})
    save_steps: int = field(default=200, metadata={"help": "Checkpoint every N optimizer steps (0: stage ends only)."})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoint-* dirs kept."})
    report_to: list[str] = field(default_factory=lambda: ["jsonl"], metadata={"help": "jsonl, tensorboard."})
    seed: int = field(default=0, metadata={"help": "Seed of model init, shuffling and (unless data_seed) data."})
    data_seed: int | None = field(default=None, metadata={"help": "Seed of the problems drawn (None: seed)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after N optimizer steps (-1: no limit)."})
    max_time_seconds: float | None = field(default=None, metadata={"help": "Stop after this much training time."})
    eval_strategy: str = field(default="no", metadata={"help": "no, or epoch: greedy validation accuracy after every epoch."})
    eval_n: int = field(default=500, metadata={"help": "Validation problems (synthetic tasks: the validation split)."})
    eval_data_path: str | None = field(default=None, metadata={"help": "Validation file for file formats."})
    early_stopping_patience: int = field(
        default=0, metadata={"help": "Stop after N evaluations at the last stage without a better accuracy (0: off)."}
    )
    load_best_model_at_end: bool = field(
        default=False, metadata={"help": "final/ holds the best validation epoch of the last stage, not the last one."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars."})

    def __post_init__(self) -> None:
        if self.mode not in ("cot", "nocot", "coconut"):
            raise ValueError(f"mode must be cot, nocot or coconut, got {self.mode!r}")
        if self.model_family not in ("gpt2", "llama", "qwen2"):
            raise ValueError(f"model_family must be gpt2, llama or qwen2, got {self.model_family!r}")
        if self.epochs_per_stage < 1 or self.c_thought < 1:
            raise ValueError("epochs_per_stage and c_thought must be >= 1")
        if self.eval_strategy not in ("no", "epoch"):
            raise ValueError(f"eval_strategy must be no or epoch, got {self.eval_strategy!r}")
        if self.eval_strategy == "no" and (self.early_stopping_patience or self.load_best_model_at_end):
            raise ValueError("early_stopping_patience and load_best_model_at_end need eval_strategy=epoch")
        if self.eval_strategy == "epoch" and self.eval_n < 1:
            raise ValueError(f"eval_n must be >= 1 with eval_strategy=epoch, got {self.eval_n}")
        if self.load_best_model_at_end and not self.at_last_stage(self.num_train_epochs - 1):
            raise ValueError("load_best_model_at_end: the curriculum never reaches its last stage in num_train_epochs "
                             "epochs, so there is no best epoch to keep; add epochs or set final_stage")  # fmt: skip

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


def encode_epoch(examples, tokenizer, thinking: ThinkingConfig, cfg: SFTConfig, stage: int, rng: random.Random):
    """Encode every example at ``stage`` (or a uniformly drawn stage with prob ``uniform_prob``)."""
    encoded = []
    for ex in examples:
        s = stage
        if cfg.mode == "coconut" and cfg.uniform_prob > 0 and rng.random() < cfg.uniform_prob:
            s = rng.randint(0, cfg.max_latent_stage)
        removed, k = stage_plan(len(ex.steps), s, cfg.max_latent_stage, cfg.c_thought, cfg.pad_latent_to_max)
        encoded.append(encode_example(tokenizer, ex.question, ex.steps, ex.answer, thinking, removed, k))
    return encoded


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over supervised tokens. ``logits [B, L, V]``, ``labels [B, L]``."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
    )


def inference_latents(cfg: SFTConfig, stage: int) -> int:
    """Thoughts used at inference after training at ``stage``."""
    if cfg.mode != "coconut":
        return 0
    return min(stage, cfg.max_latent_stage) * cfg.c_thought


def _new_optimizer(model, cfg: SFTConfig, total_steps: int):
    from transformers import get_scheduler

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = get_scheduler(cfg.lr_scheduler_type, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    return opt, sched


def train_sft(cfg: SFTConfig) -> Path:
    """Run supervised training; returns the final checkpoint directory (``output_dir/final``)."""
    from accelerate import Accelerator

    # 1. config, model, data, resume point
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # cpu=True lets accelerate run several CPU processes (gloo)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    common.seed_everything(cfg.seed)
    resume_dir = common.latest_checkpoint(out)
    tiny = dict(family=cfg.model_family, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                max_length=cfg.max_length, dropout=cfg.dropout)  # fmt: skip
    start_from = str(resume_dir) if resume_dir else cfg.model_name_or_path
    model, tokenizer, _ = common.load_or_build(start_from, tiny, cfg.seed)
    model.to(accelerator.device)
    thinking = ThinkingConfig.from_tokenizer(tokenizer, cfg.thinking_mode, cfg.c_thought)
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    examples = load_examples(cfg.task, "train", cfg.num_train_examples, data_seed, cfg.data_path, **cfg.task_kwargs)
    validation = []
    if cfg.eval_strategy == "epoch":
        validation = common.validation_examples(cfg.task, cfg.eval_n, data_seed, cfg.task_kwargs, cfg.eval_data_path)
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
    state = load_trainer_state(resume_dir) if resume_dir else None
    start_epoch, skip, global_step = (state["epoch"], state["batch_in_epoch"], state["global_step"]) if state else (0, 0, 0)
    best = dict(state.get("best", {})) if state else {}  # {"accuracy", "epoch"} of the best last-stage epoch
    accum, batch = cfg.gradient_accumulation_steps, cfg.per_device_train_batch_size
    steps_per_epoch = math.ceil(len(examples) / (batch * accelerator.num_processes * accum))
    total_steps = steps_per_epoch * cfg.num_train_epochs if cfg.max_steps < 0 else cfg.max_steps
    optimizer, scheduler = _new_optimizer(model, cfg, total_steps)
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        common.set_rng_state(state["rng"])
    logger = common.RunLogger(out, cfg.report_to, accelerator.is_main_process)
    show = not cfg.disable_tqdm and accelerator.is_local_main_process
    bar = tqdm(total=total_steps, initial=global_step, desc=f"sft[{cfg.mode}]", disable=None if show else True)  # None: off when not a terminal
    stage = cfg.stage_of(start_epoch)

    def checkpoint(path: Path, epoch: int, batch_in_epoch: int, **extra) -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            thinking.num_latents = inference_latents(cfg, stage)
            if cfg.mode == "coconut":
                thinking.curriculum_stage, thinking.max_latent_stage = stage, cfg.max_latent_stage
            trainer_state = dict(epoch=epoch, batch_in_epoch=batch_in_epoch, global_step=global_step, stage=stage, best=best,
                                 optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=common.rng_state(), **extra)  # fmt: skip
            save_checkpoint(path, model, tokenizer, thinking, trainer_state)
            common.prune_checkpoints(out, cfg.save_total_limit)

    tokens_seen, t0 = 0, time.perf_counter()

    def out_of_budget() -> bool:
        over_time = cfg.max_time_seconds is not None and time.perf_counter() - t0 >= cfg.max_time_seconds
        return 0 <= cfg.max_steps <= global_step or over_time
    def plateau_reached(epochs_done: int) -> bool:
        patience = cfg.early_stopping_patience
        return patience > 0 and bool(best) and epochs_done - best["epoch"] >= patience

    stopped, epochs_done = "epochs", start_epoch
    for epoch in range(start_epoch, cfg.num_train_epochs):
        if plateau_reached(epoch):  # also when a resumed run had already stopped here
            stopped = "plateau"
            break
        # 2. curriculum stage; a fresh optimizer when the stage switches
        first = skip if epoch == start_epoch else 0
        stage = cfg.stage_of(epoch)
        if first == 0 and epoch > 0 and stage != cfg.stage_of(epoch - 1) and cfg.reset_optimizer:
            optimizer, scheduler = _new_optimizer(model, cfg, total_steps)
        # 3. the epoch's data, shuffled by (seed, epoch) so that a resumed run sees the same order
        encoded = encode_epoch(examples, tokenizer, thinking, cfg, stage, random.Random(cfg.seed * 1000 + epoch))
        order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
        shard = order[accelerator.process_index :: accelerator.num_processes]
        micro = [shard[i : i + batch] for i in range(0, len(shard), batch)]
        usable = len(micro) - len(micro) % accum or len(micro)
        model.train()
        for i in range(first * accum, usable):
            # 4. forward through the thoughts, loss on the completion, backward; step every `accum`
            b = collate([encoded[j] for j in micro[i]], tokenizer.pad_token_id, thinking.latent_token_id)
            with accelerator.autocast():
                logits = latent_forward(model, b.input_ids.to(model.device), b.attention_mask.to(model.device),
                                        b.latent_mask.to(model.device)).logits  # fmt: skip
                loss = sft_loss(logits, b.labels.to(model.device))
            (loss / accum).backward()
            tokens_seen += int(b.attention_mask.sum())
            if (i + 1) % accum:
                continue
            common.average_gradients(model, accelerator)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            bar.update(1)
            # 5. log and checkpoint
            if global_step % cfg.logging_steps == 0:
                loss_value = accelerator.gather(loss.detach()[None]).mean().item()
                logger.log(global_step, {"loss": loss_value, "epoch": epoch + (i + 1) / usable, "stage": stage,
                                         "learning_rate": scheduler.get_last_lr()[0],
                                         "tokens_per_second": tokens_seen / (time.perf_counter() - t0)})  # fmt: skip
                bar.set_postfix(loss=f"{loss_value:.3f}", stage=stage)
            if cfg.save_steps > 0 and global_step % cfg.save_steps == 0:
                checkpoint(out / f"checkpoint-{global_step}", epoch, (i + 1) // accum)
            if out_of_budget():
                break
        if out_of_budget():
            stopped = "budget"
            break
        epochs_done = epoch + 1
        # 6. validation; the best epoch of the last stage (early stopping looks at it next epoch)
        if cfg.eval_strategy == "epoch":
            thinking.num_latents = inference_latents(cfg, stage)
            accuracy = common.validation_accuracy(model, tokenizer, thinking, validation, accelerator)
            logger.log(global_step, {"eval/accuracy": accuracy, "epoch": epoch + 1, "stage": stage})
            if cfg.at_last_stage(epoch):
                if not best or accuracy > best["accuracy"]:
                    best.update(accuracy=accuracy, epoch=epoch + 1)
                    checkpoint(out / "best", epoch + 1, 0)
        checkpoint(out / f"checkpoint-{global_step}", epoch + 1, 0)
        if cfg.mode == "coconut" and (epoch + 1 == cfg.num_train_epochs or cfg.stage_of(epoch + 1) != stage):
            checkpoint(out / f"stage-{stage}", epoch + 1, 0)
    bar.close()
    if stopped == "epochs" and plateau_reached(epochs_done):
        stopped = "plateau"
    final = out / "final"
    if cfg.load_best_model_at_end and best:
        model.load_state_dict(load_checkpoint(out / "best")[0].state_dict())
    checkpoint(final, epochs_done, 0, stopped=stopped)
    accelerator.wait_for_everyone()  # no process returns before final/ is written
    logger.close()
    return final
