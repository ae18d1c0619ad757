"""Supervised training: chain of thought (``discrete``), no-CoT, and the Coconut curriculum.

``latentrl sft --config FILE [key=value ...]``. The loop, top to bottom (``train_sft``):

1. open the run (folder, lock, resume point); build or load the model; the problems
2. for each epoch: stop at the plateau; pick the curriculum stage, a fresh optimizer at a switch
3. encode the epoch's examples for the stage; iterate shuffled micro-batches (seeded by epoch)
4. latent forward, cross-entropy on the completion, backward; every ``gradient_accumulation_steps``
   micro-batches an optimizer step
5. log every ``logging_steps`` (the mean loss over them); checkpoint every ``save_steps``
6. after the epoch: with ``eval_strategy="epoch"`` greedy validation accuracy, the best epoch of
   the last stage kept in ``best/``; ``stage-<s>`` at each Coconut stage end
7. ``final/`` (the best epoch with ``load_best_model_at_end``), with why training stopped
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed

from latentrl.models import collate, latent_forward, load_checkpoint
from latentrl.models.layout import ThinkingConfig, check_fits_context, encode_example, model_context_length, stage_plan
from latentrl.train import common
from latentrl.train.run import Run, check_finite, warn
from latentrl.train.sft_config import SFT_FIXED_ON_RESUME, SFTConfig

__all__ = ["SFTConfig", "encode_epoch", "sft_loss", "train_sft"]


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


def steps_per_epoch(n_examples: int, cfg: SFTConfig, world: int) -> int:
    """Optimizer steps in an epoch, with the loop's own arithmetic (ValueError when there is none)."""
    micro = math.ceil((n_examples // world) / cfg.per_device_train_batch_size)
    steps = micro // cfg.gradient_accumulation_steps
    if steps == 0:
        raise ValueError(f"an epoch of {n_examples} examples over {world} process(es) gives {micro} micro-batches of "
                         f"{cfg.per_device_train_batch_size}, fewer than gradient_accumulation_steps="
                         f"{cfg.gradient_accumulation_steps}: no optimizer step; use more examples or smaller batches")  # fmt: skip
    return steps


@dataclass
class SFTProgress:
    """Where an SFT run is; saved in every checkpoint's ``trainer_state.json``."""

    epoch: int = 0  # the epoch under way (or the next one, at an epoch end)
    batch_in_epoch: int = 0  # optimizer steps already done in ``epoch``
    global_step: int = 0
    stage: int = 0
    best: dict = field(default_factory=dict)  # {"accuracy", "epoch"} of the best last-stage epoch
    stopped: str | None = None  # why training ended: epochs, plateau or budget
    finished: bool = False
    window: list = field(default_factory=list)  # micro-batch losses since the last log (a resume keeps them)
    holds_best: bool = False  # final/ holds the best epoch's weights, not this state's (not resumable)
    train_seconds: float = 0.0  # training time up to this checkpoint, over every resumed process (max_time_seconds)


class SFTLoop:
    """The state of one SFT run (model, optimizer, progress) and its steps."""

    def __init__(self, cfg: SFTConfig, run: Run, model, tokenizer, thinking: ThinkingConfig, steps_per_epoch: int):
        self.cfg, self.run, self.model, self.tokenizer, self.thinking = cfg, run, model, tokenizer, thinking
        self.accelerator = run.accelerator
        self.total_steps = steps_per_epoch * cfg.num_train_epochs if cfg.max_steps < 0 else cfg.max_steps
        saved = {k: v for k, v in run.resume.state.items() if k in SFTProgress.__dataclass_fields__}
        self.progress = SFTProgress(**saved) if saved else SFTProgress(stage=cfg.stage_of(0))
        if self.progress.best and not (run.out / "best").is_dir():  # moved aside by an explicit resume
            warn(f"the best epoch recorded at step {self.progress.global_step} ({self.progress.best}) has no best/ "
                 "folder any more (an explicit resume moved it aside): the best epoch is chosen again from here")
            self.progress.best = {}
        self.optimizer, self.scheduler = self.new_optimizer()
        if run.resume.checkpoint is not None:
            run.restore(self.optimizer, self.scheduler)
        self.batches_in_epoch = 0  # optimizer steps of the current epoch
        self.tokens_seen, self.t0 = 0, time.perf_counter()  # this process's (tokens per second)
        self.budget_t0 = self.t0 - self.progress.train_seconds  # the run's (max_time_seconds goes on over a resume)

    def new_optimizer(self):
        from transformers import get_scheduler

        cfg = self.cfg
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        sched = get_scheduler(cfg.lr_scheduler_type, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=self.total_steps)
        return opt, sched

    def reset_optimizer(self) -> None:
        """A stage switch with ``reset_optimizer``: fresh AdamW moments (Coconut's choice); the learning-rate
        schedule goes on from the global step (a new scheduler would warm up and decay again)."""
        schedule = self.scheduler.state_dict()
        self.optimizer, self.scheduler = self.new_optimizer()
        self.scheduler.load_state_dict(schedule)
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr

    # 2. the stage of an epoch; early stopping and the step / time budget
    def start_epoch(self, epoch: int) -> None:
        cfg, p = self.cfg, self.progress
        stage = cfg.stage_of(epoch)
        resuming_inside = epoch == p.epoch and p.batch_in_epoch > 0
        if not resuming_inside and epoch > 0 and stage != cfg.stage_of(epoch - 1) and cfg.reset_optimizer:
            self.reset_optimizer()
        if not resuming_inside:
            p.batch_in_epoch = 0
        p.epoch, p.stage = epoch, stage

    def plateau_reached(self, epochs_done: int) -> bool:
        patience, best = self.cfg.early_stopping_patience, self.progress.best
        return patience > 0 and bool(best) and epochs_done - best["epoch"] >= patience

    def out_of_budget(self) -> bool:
        cfg = self.cfg
        over_time = cfg.max_time_seconds is not None and time.perf_counter() - self.budget_t0 >= cfg.max_time_seconds
        return 0 <= cfg.max_steps <= self.progress.global_step or over_time

    # 3. the epoch's micro-batches, shuffled by (seed, epoch) so that a resumed run sees the same order
    def micro_batches(self, examples) -> list:
        cfg, acc, p = self.cfg, self.accelerator, self.progress
        seed = cfg.seed * 1000 + p.epoch
        encoded = encode_epoch(examples, self.tokenizer, self.thinking, cfg, p.stage, random.Random(seed))
        check_fits_context([len(e.ids) for e in encoded], model_context_length(self.model), cfg.data_path or f"task {cfg.task!r}")
        order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(seed)).tolist()
        order = order[: len(order) - len(order) % acc.num_processes]  # equal shards: every process steps alike
        shard = order[acc.process_index :: acc.num_processes]
        micro = [[encoded[j] for j in shard[i : i + cfg.per_device_train_batch_size]]
                 for i in range(0, len(shard), cfg.per_device_train_batch_size)]  # fmt: skip
        accum = cfg.gradient_accumulation_steps
        self.batches_in_epoch = len(micro) // accum  # a last incomplete accumulation is left out
        return micro[p.batch_in_epoch * accum : self.batches_in_epoch * accum]

    # 4. one micro-batch forward and backward
    def backward(self, encoded) -> None:
        b = collate(encoded, self.tokenizer.pad_token_id, self.thinking.latent_token_id)
        device = self.model.device
        with common.autocast(self.accelerator, self.model, tuple(b.input_ids.shape)):
            logits = latent_forward(self.model, b.input_ids.to(device), b.attention_mask.to(device), b.latent_mask.to(device)).logits
            loss = sft_loss(logits, b.labels.to(device))
        check_finite(loss, "the loss", self.progress.global_step + 1)
        (loss / self.cfg.gradient_accumulation_steps).backward()
        self.progress.window.append(loss.item())
        self.tokens_seen += int(b.attention_mask.sum())

    def optimizer_step(self) -> None:
        cfg, p = self.cfg, self.progress
        common.average_gradients(self.model, self.accelerator)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        check_finite(norm, "the gradient norm", p.global_step + 1)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        p.global_step += 1
        p.batch_in_epoch += 1
        self.run.bar.update(1)
        # 5. log (mean loss of the window, over processes) and checkpoint
        if p.global_step % cfg.logging_steps == 0:
            window = p.window
            loss = common.mean_over_processes({"loss": sum(window) / len(window)}, self.accelerator)["loss"]
            p.window = []
            self.run.log(p.global_step, {"loss": loss, "epoch": p.epoch + p.batch_in_epoch / max(1, self.batches_in_epoch),
                                         "stage": p.stage, "learning_rate": self.scheduler.get_last_lr()[0],
                                         "tokens_per_second": self.tokens_seen / (time.perf_counter() - self.t0)})  # fmt: skip
            self.run.bar.set_postfix(loss=f"{loss:.3f}", stage=p.stage)
        if cfg.save_steps > 0 and p.global_step % cfg.save_steps == 0:
            self.save(f"checkpoint-{p.global_step}")

    # 6. after an epoch: validation, the best epoch, the stage checkpoint
    def end_epoch(self, validation) -> None:
        cfg, p = self.cfg, self.progress
        epoch, stage = p.epoch, p.stage
        p.epoch, p.batch_in_epoch = epoch + 1, 0
        if cfg.eval_strategy == "epoch":
            self.thinking.num_latents = cfg.inference_latents(stage)
            accuracy = common.validation_accuracy(self.model, self.tokenizer, self.thinking, validation, self.accelerator)
            self.run.log(p.global_step, {"eval/accuracy": accuracy, "epoch": epoch + 1, "stage": stage})
            if cfg.at_last_stage(epoch) and (not p.best or accuracy > p.best["accuracy"]):
                p.best = {"accuracy": accuracy, "epoch": epoch + 1}
                self.save("best")
        if cfg.mode == "coconut" and (epoch + 1 == cfg.num_train_epochs or cfg.stage_of(epoch + 1) != stage):
            self.save(f"stage-{stage}")

    def save(self, name: str) -> Path:
        cfg, p = self.cfg, self.progress
        self.thinking.num_latents = cfg.inference_latents(p.stage)
        p.train_seconds = time.perf_counter() - self.budget_t0
        if cfg.mode == "coconut":
            self.thinking.curriculum_stage, self.thinking.max_latent_stage = p.stage, cfg.max_latent_stage
        return self.run.save(name, self.model, self.tokenizer, self.thinking, asdict(p), self.optimizer, self.scheduler)

    # 7. the final checkpoint
    def finish(self, stopped: str) -> Path:
        """``final/``; with ``load_best_model_at_end`` the last state is kept as ``checkpoint-<step>`` first
        (so that a later explicit resume continues from it, not from the best epoch's weights)."""
        self.progress.stopped, self.progress.finished = stopped, True
        if self.cfg.load_best_model_at_end and self.progress.best:
            self.save(f"checkpoint-{self.progress.global_step}")
            self.model.load_state_dict(load_checkpoint(self.run.out / "best")[0].state_dict())
            self.progress.holds_best = True
        return self.save("final")


def train_sft(cfg: SFTConfig) -> Path:
    """Run supervised training; returns the final checkpoint directory (``output_dir/final``)."""
    with Run(cfg, "sft", SFT_FIXED_ON_RESUME) as run:
        if run.resume.finished:
            print(f"sft: {run.out / 'final'} is already complete (nothing to do)")
            return run.out / "final"
        # 1. data (a bad file fails before any model loads), model
        examples = common.train_examples(cfg)
        validation = common.validation_examples(cfg) if cfg.eval_strategy == "epoch" else []
        tiny = dict(family=cfg.model_family, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                    max_length=cfg.max_length, dropout=cfg.dropout)  # fmt: skip
        set_seed(cfg.seed)
        model, tokenizer, _ = common.load_or_build(str(run.resume.checkpoint or cfg.model_name_or_path or ""), tiny, cfg.seed)
        model.to(run.accelerator.device)
        thinking = ThinkingConfig.from_tokenizer(tokenizer, cfg.thinking_mode, cfg.c_thought)
        loop = SFTLoop(cfg, run, model, tokenizer, thinking, steps_per_epoch(len(examples), cfg, run.accelerator.num_processes))
        run.progress(loop.total_steps, f"sft[{cfg.mode}]")
        stopped = "epochs"
        for epoch in range(loop.progress.epoch, cfg.num_train_epochs):
            if loop.plateau_reached(epoch):  # also when a resumed run had already stopped here
                stopped = "plateau"
                break
            # 2-5. the epoch's optimizer steps
            loop.start_epoch(epoch)
            batches = loop.micro_batches(examples)
            model.train()
            for i, encoded in enumerate(batches):
                loop.backward(encoded)
                if (i + 1) % cfg.gradient_accumulation_steps == 0:
                    loop.optimizer_step()
                    if loop.out_of_budget():
                        break
            if loop.out_of_budget():
                stopped = "budget"
                break
            loop.end_epoch(validation)  # 6.
        if stopped == "epochs" and loop.plateau_reached(loop.progress.epoch):
            stopped = "plateau"
        return loop.finish(stopped)  # 7.
