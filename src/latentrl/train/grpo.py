"""GRPO post-training for every thinking mode; Dropout-GRPO when ``exploration=dropout``.

``latentrl grpo --config FILE [key=value ...]``. One step, top to bottom:

1. sample ``generation_batch_size / G`` prompts; draw one noise seed per rollout
2. roll out G completions per prompt (latent phase under the rollout's noise, then answer decoding)
3. score them with the reward functions; advantages A = r - mean_group(r) (scaled per ``scale_rewards``)
4. old and reference log-probs under the same recorded noise (common random numbers)
5. ``num_iterations`` updates: recompute log-probs through the latent trajectory, clipped loss, step
6. log, evaluate, checkpoint
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed

from latentrl.exploration import make_exploration
from latentrl.losses import group_advantages, policy_loss
from latentrl.models.latent import compiled_step
from latentrl.models.layout import check_fits_context, encode_prompt, model_context_length
from latentrl.models.readout import FULL_POLICY, PolicyHead, ReadoutTap
from latentrl.models.thinking import thinking_mode
from latentrl.rollout import Rollout, completion_logps, roll_out, score
from latentrl.train import common
from latentrl.train.grpo_config import GRPO_FIXED_ON_RESUME, GRPOConfig, load_reward_func
from latentrl.errors import NonFiniteError
from latentrl.train.run import Run, check_finite

__all__ = ["GRPOConfig", "load_reward_func", "make_rollout", "rollout_seeds", "train_grpo", "update"]


def rollout_seeds(seed: int, step: int, n: int) -> torch.Tensor:
    """One noise seed per rollout of a step: ``[n]`` int64, a function of (seed, step) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, 2**62, (n,), generator=g, dtype=torch.long)


def group_diagnostics(rollout: Rollout, G: int) -> dict[str, float]:
    """Distinct answers per group and mean pairwise distance of a group's latent trajectories."""
    from latentrl.rewards import extract_answer

    groups = [rollout.completions[i : i + G] for i in range(0, len(rollout.completions), G)]
    distinct = sum(len({extract_answer(c) for c in g}) for g in groups) / len(groups)
    out = {"latent/distinct_answers": distinct}
    if rollout.thoughts is not None and G > 1:
        traj = rollout.thoughts.flatten(1).view(-1, G, rollout.thoughts[0].numel())  # [N, G, K*D]
        dist = torch.cdist(traj, traj)  # [N, G, G]
        out["latent/trajectory_distance"] = (dist.sum((1, 2)) / (G * (G - 1))).mean().item()
        out["latent/thought_norm"] = rollout.thoughts.norm(dim=-1).mean().item()
    if rollout.soft is not None:
        out |= soft_diagnostics(rollout.soft)
    return out


def soft_diagnostics(trace) -> dict[str, float]:
    """Thinking length, entropy of p at the soft steps, and the share of steps whose chosen token (the
    Gumbel-max id) is not the top-1 id."""
    steps = trace.soft_mask.sum()
    per_step = lambda x: (x.float() * trace.soft_mask).sum().item() / max(1, int(steps))  # noqa: E731
    weights = trace.weights()  # [B, T, k]
    mixture_entropy = -(weights * weights.clamp(min=1e-12).log()).sum(-1)  # [B, T]
    return {"soft/thinking_steps": trace.soft_mask.sum(1).float().mean().item(), "soft/entropy": per_step(trace.entropy),
            "soft/mixture_entropy": per_step(mixture_entropy), "soft/frac_not_top1": per_step(trace.differs_from_top1)}  # fmt: skip


def grpo_step_metrics(rollout: Rollout, G: int) -> dict[str, float]:
    r = rollout.rewards.view(-1, G)  # [N, G]
    std = r.std(1)
    lengths = rollout.completion_mask.sum(1).float()
    return {
        "reward": rollout.rewards.mean().item(),
        "reward_std": std.mean().item(),
        "frac_reward_zero_std": (std < 1e-6).float().mean().item(),
        "completions/mean_length": lengths.mean().item(),
        "completions/clipped_ratio": rollout.truncated.float().mean().item(),
        **{f"rewards/{k}/mean": v.nanmean().item() for k, v in rollout.reward_parts.items()},  # NaN: not applicable
    }


def make_rollout(model, tokenizer, thinking, batch, cfg: GRPOConfig, exploration, seeds, generator, reward_funcs, weights,
                 accelerator=None):
    """Steps 2-3: generate, score, and compute the advantages into one :class:`Rollout`.

    With several processes each one rolls out its own whole groups; the rewards of all processes
    are gathered so that ``scale_rewards="batch"`` sees the whole batch, as in TRL.
    """
    with common.autocast(accelerator):
        gen, texts = roll_out(model, tokenizer, thinking, batch, num_generations=cfg.num_generations,
                              max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                              top_p=cfg.top_p, exploration=exploration, seeds=seeds, generator=generator,
                              engine=cfg.engine())  # fmt: skip
    G = cfg.num_generations
    t = time.perf_counter()
    prompts = [ex.question for ex in batch for _ in range(G)]
    columns = {"answer": [ex.answer for ex in batch for _ in range(G)], "steps": [list(ex.steps) for ex in batch for _ in range(G)]}
    rewards, parts = score(reward_funcs, weights, prompts, texts, columns)
    device = gen.completion_ids.device  # the record lives where the model does (the loss mixes them)
    rewards, parts = rewards.to(device), {k: v.to(device) for k, v in parts.items()}
    if accelerator is not None and accelerator.num_processes > 1:
        all_rewards = accelerator.gather(rewards.to(accelerator.device)).to(device)  # [world * B] in process order
        start = accelerator.process_index * len(rewards)
        advantages = group_advantages(all_rewards, G, cfg.scale_rewards)[start : start + len(rewards)]
    else:
        advantages = group_advantages(rewards, G, cfg.scale_rewards)
    kept = (~gen.truncated)[:, None].long() if cfg.mask_truncated_completions else torch.ones_like(gen.truncated[:, None]).long()
    actions = thinking_mode(thinking.thinking_mode).loss_mask(gen, exploration)  # [B, T]
    rollout = Rollout(prompt_ids=gen.prompt_ids, prompt_mask=gen.prompt_mask, latent_mask=gen.latent_mask,
                      completion_ids=gen.completion_ids, completion_mask=gen.completion_mask * kept, seeds=gen.seeds,
                      rewards=rewards, reward_parts=parts, advantages=advantages, completions=texts,
                      truncated=gen.truncated, thoughts=gen.thoughts, soft=gen.soft,
                      loss_mask=None if actions is gen.completion_mask else actions * kept)  # fmt: skip
    return rollout, time.perf_counter() - t


def keep_informative_groups(rollout: Rollout, G: int) -> Rollout:
    """Drop groups whose rewards are all equal (their advantages are all zero)."""
    informative = rollout.rewards.view(-1, G).std(1) > 1e-6  # [N]
    rows = informative.repeat_interleave(G).nonzero().flatten().cpu()  # indexes CPU and device fields alike
    return rollout.select(rows)


def update_forward(model, cfg: GRPOConfig, head=FULL_POLICY):
    """What runs the model's calls in the log-prob recomputations: its forward through ``torch.compile``
    (dynamic shapes) with ``torch_compile_update``, else the model itself (None). BuPO's phase 1 (an internal
    layer's policy) stays eager: the layers above it get no gradient, which a compiled backward returns as
    zeros instead of None, and AdamW steps a parameter whose gradient is zero (its step count, so its bias
    correction, and its weight decay)."""
    return compiled_step(model, static=False) if cfg.torch_compile_update and head.full else None


def update(model, rollout: Rollout, cfg: GRPOConfig, exploration, optimizer, scheduler, accelerator=None,
           step: int = 0, head=FULL_POLICY) -> dict[str, float]:  # fmt: skip
    """Step 5: ``num_iterations`` clipped-GRPO updates on the rollout (micro-batched).

    Normalisers are global: ``B`` counts the rollouts and ``tokens`` the completion tokens of all
    processes, and each process's loss is scaled by the number of processes, so that averaging the
    gradients over processes gives the gradient of the whole batch's loss (``bnpo`` normalises by
    each micro-batch's tokens, as TRL does per device). Every process calls this, also one whose
    rows were all dropped: the collectives must match. Returned metrics are global.
    """
    world, mb, rows = accelerator.num_processes if accelerator else 1, cfg.per_device_train_batch_size, len(rollout.seeds)
    forward = update_forward(model, cfg, head)
    n_rows, n_tokens = common.sum_over_processes([rows, int(rollout.action_mask.sum())], accelerator)
    B, tokens = max(1, int(n_rows)), torch.tensor(max(1.0, n_tokens))
    metrics: dict[str, float] = {}
    timings = {"time/logprob": 0.0, "time/backward": 0.0}
    for _ in range(cfg.num_iterations):
        for start in range(0, len(rollout.seeds), mb):
            part = rollout.select(slice(start, start + mb))
            t = time.perf_counter()
            with common.autocast(accelerator, model, part.shape):
                lp = completion_logps(model, part, exploration, cfg.temperature, head, forward)
            timings["time/logprob"] += time.perf_counter() - t
            loss, m = policy_loss(lp.logps, part.old_logps, part.advantages, part.action_mask, part.ref_logps,
                                  cfg.beta, cfg.epsilon, cfg.epsilon_high, cfg.loss_type, cfg.importance_sampling_level,
                                  cfg.max_completion_length, num_items_in_batch=tokens)  # fmt: skip
            if cfg.loss_type != "dapo":
                loss = loss * len(part.seeds) / B  # micro-batch means -> batch mean
            loss = loss * world  # gradients are averaged over processes below
            check_finite(loss, "the GRPO loss", step)
            t = time.perf_counter()
            loss.backward()
            timings["time/backward"] += time.perf_counter() - t
            m["entropy"] = (lp.entropy * part.action_mask).sum().item() / max(1, part.action_mask.sum().item())
            for k, v in m.items():  # micro-batch values -> this process's mean over its rows
                metrics[k] = metrics.get(k, 0.0) + v * len(part.seeds) / (rows * cfg.num_iterations)
            # the batch loss is the mean over processes of the scaled micro-batch losses' sums; stored
            # per row so that the row-weighted mean over processes below gives it
            metrics["loss"] = metrics.get("loss", 0.0) + loss.item() * B / (world * rows * cfg.num_iterations)
        if world > 1:
            common.average_gradients(model, accelerator)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        check_finite(norm, "the gradient norm", step)
        metrics["grad_norm"] = float(norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return {**common.mean_over_processes(metrics, accelerator, weight=rows), **timings}


@torch.no_grad()
def fill_old_and_ref_logps(model, ref_model, rollout: Rollout, cfg: GRPOConfig, exploration, accelerator=None,
                           head=FULL_POLICY) -> None:  # fmt: skip
    """Step 4: log-probs of the sampling policy (when reused over several iterations) and of the
    reference, both under the rollout's recorded noise."""
    mb = cfg.per_device_train_batch_size
    parts = [rollout.select(slice(s, s + mb)) for s in range(0, len(rollout.seeds), mb)]
    if not parts:  # every group of this process was dropped (skip_zero_std_groups)
        return
    with common.autocast(accelerator):
        if cfg.num_iterations > 1:
            forward = update_forward(model, cfg, head)
            rollout.old_logps = torch.cat([completion_logps(model, p, exploration, cfg.temperature, head, forward).logps
                                           for p in parts])  # fmt: skip
        if ref_model is not None:
            forward = update_forward(ref_model, cfg, head)
            rollout.ref_logps = torch.cat([completion_logps(ref_model, p, exploration, cfg.temperature, head, forward).logps
                                           for p in parts])  # fmt: skip


def step_inputs(cfg: GRPOConfig, pool, step: int, accelerator):
    """Step 1: this process's prompts, one noise seed per rollout and the sampling generator, all
    functions of (seed, step) only, so a resumed run draws the same and a rollout is the same on any
    number of processes; each process takes its own slice of whole groups."""
    world, rank = accelerator.num_processes, accelerator.process_index
    G, n_prompts = cfg.num_generations, cfg.generation_batch_size // cfg.num_generations
    rng = random.Random(cfg.seed * 1_000_003 + step)
    batch = rng.sample(pool, n_prompts) if n_prompts <= len(pool) else rng.choices(pool, k=n_prompts)
    seeds = rollout_seeds(cfg.seed, step, n_prompts * G)
    local = n_prompts // world
    batch, seeds = batch[rank * local : (rank + 1) * local], seeds[rank * local * G : (rank + 1) * local * G]
    # the same on every process: a row's token draws mix its own seed in (latentrl.models.sampling)
    generator = torch.Generator(accelerator.device).manual_seed(cfg.seed * 1_000_003 + step)
    return batch, seeds, generator


def learn(model, ref_model, rollout: Rollout, cfg: GRPOConfig, exploration, optimizer, scheduler, accelerator, step: int) -> dict:
    """Steps 4-5: old / reference log-probs under the recorded noise, then the updates. Every process
    takes part in the collectives, also one whose groups were all dropped."""
    if not common.sum_over_processes([len(rollout.seeds)], accelerator)[0]:
        return {}  # every group of the step was dropped (skip_zero_std_groups)
    head = cfg.policy_head(step - 1)  # BuPO: an internal layer's policy in phase 1
    metrics = {"bupo/layer": head.layer or 0} if cfg.bupo_layer is not None else {}
    if cfg.num_iterations > 1 or ref_model is not None:
        t = time.perf_counter()
        fill_old_and_ref_logps(model, ref_model, rollout, cfg, exploration, accelerator, head)
        metrics["time/old_ref_logprob"] = time.perf_counter() - t
    return metrics | update(model, rollout, cfg, exploration, optimizer, scheduler, accelerator, step, head)


@dataclass
class GRPOSetup:
    """What a GRPO run is made of, built before its first step."""

    model: torch.nn.Module
    ref_model: torch.nn.Module | None  # the frozen starting checkpoint (beta > 0)
    tokenizer: object
    thinking: object
    pool: list  # training prompts
    validation: list
    reward_funcs: list
    weights: list[float]
    exploration: object
    optimizer: torch.optim.Optimizer
    scheduler: object


def build_setup(cfg: GRPOConfig, run: Run) -> GRPOSetup:
    """Data first (a bad file fails before any model loads), then the model (the newest checkpoint
    when resuming), the reference (always the starting checkpoint), rewards, noise and optimizer."""
    from transformers import get_scheduler

    acc = run.accelerator
    pool, validation = common.train_examples(cfg), common.validation_examples(cfg) if cfg.eval_steps else []
    set_seed(cfg.seed)
    model, tokenizer, thinking = common.load_or_build(str(run.resume.checkpoint or cfg.model_name_or_path), {}, cfg.seed)
    thinking = cfg.thinking_for(thinking, tokenizer, model.get_input_embeddings().num_embeddings)
    cfg.check_source_fits_mode(thinking.thinking_mode)
    model.to(acc.device)
    lengths = [len(encode_prompt(tokenizer, ex.question, thinking)) + cfg.max_completion_length for ex in pool]
    check_fits_context(lengths, model_context_length(model), f"task {cfg.task!r} prompts", what="prompt + max_completion_length")
    ref_model = None
    if cfg.beta:
        ref_model = common.load_or_build(cfg.model_name_or_path, {}, cfg.seed)[0].eval().requires_grad_(False).to(acc.device)
    if cfg.bupo_layer is not None:
        ReadoutTap(model, PolicyHead(cfg.bupo_layer, cfg.bupo_module, cfg.bupo_final_norm))  # a bad layer or module: an error now
    reward_funcs = [load_reward_func(s) for s in cfg.reward_funcs]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.max_steps * cfg.num_iterations)  # fmt: skip
    if run.resume.checkpoint is not None:
        run.restore(optimizer, scheduler)
    return GRPOSetup(model, ref_model, tokenizer, thinking, pool, validation, reward_funcs,
                     cfg.reward_weights or [1.0] * len(reward_funcs), make_exploration(cfg.exploration, **cfg.exploration_kwargs()),
                     optimizer, scheduler)  # fmt: skip


def train_grpo(cfg: GRPOConfig) -> Path:
    """Run GRPO; returns the final checkpoint directory (``output_dir/final``).

    Several processes (``accelerate launch`` / ``torchrun``) split each step's prompts: every
    process rolls out and scores whole groups, the rewards are gathered for the advantages, and the
    gradients are averaged, so N processes train like one process with the same global batch.
    """
    with Run(cfg, "grpo", GRPO_FIXED_ON_RESUME) as run:
        if run.resume.finished:
            print(f"grpo: {run.out / 'final'} is already complete (nothing to do)")
            return run.out / "final"
        acc, G = run.accelerator, cfg.num_generations
        if (cfg.generation_batch_size // G) % acc.num_processes:
            raise ValueError(f"generation_batch_size / num_generations = {cfg.generation_batch_size // G} prompts per step "
                             f"cannot be split over {acc.num_processes} processes")  # fmt: skip
        s = build_setup(cfg, run)
        step = run.resume.state.get("global_step", 0)
        bar = run.progress(cfg.max_steps, f"grpo[{cfg.exploration}]")

        def evaluate_now() -> float:
            return common.validation_accuracy(s.model, s.tokenizer, s.thinking, s.validation, acc, cfg.max_completion_length)

        if cfg.eval_steps and step == 0:
            run.log(0, {"eval/accuracy": evaluate_now()})
        while step < cfg.max_steps:
            batch, seeds, generator = step_inputs(cfg, s.pool, step, acc)  # 1.
            s.model.eval()  # the only noise is the recorded one, also in the update
            t = time.perf_counter()
            try:
                rollout, reward_time = make_rollout(s.model, s.tokenizer, s.thinking, batch, cfg, s.exploration, seeds,
                                                    generator, s.reward_funcs, s.weights, acc)  # 2-3. fmt: skip
            except NonFiniteError as err:
                raise NonFiniteError(f"step {step + 1}: {err}; stopped before writing a checkpoint") from None
            metrics = {"time/rollout": time.perf_counter() - t - reward_time, "time/reward": reward_time,
                       **grpo_step_metrics(rollout, G), **group_diagnostics(rollout, G)}  # fmt: skip
            metrics = common.mean_over_processes(metrics, acc)  # every process has G-row groups here
            if cfg.skip_zero_std_groups:
                rollout = keep_informative_groups(rollout, G)
            metrics |= learn(s.model, s.ref_model, rollout, cfg, s.exploration, s.optimizer, s.scheduler, acc, step + 1)  # 4-5.
            step += 1
            bar.update(1)
            # 6. log, evaluate, checkpoint
            if cfg.eval_steps and step % cfg.eval_steps == 0:
                metrics["eval/accuracy"] = evaluate_now()
            if step % cfg.logging_steps == 0 or "eval/accuracy" in metrics:
                run.log(step, metrics | {"learning_rate": s.scheduler.get_last_lr()[0]})
                bar.set_postfix(reward=f"{metrics['reward']:.3f}", zero_std=f"{metrics['frac_reward_zero_std']:.2f}")
            if cfg.save_steps and step % cfg.save_steps == 0:
                run.save(f"checkpoint-{step}", s.model, s.tokenizer, s.thinking, {"global_step": step}, s.optimizer, s.scheduler)
        return run.save("final", s.model, s.tokenizer, s.thinking, {"global_step": step, "finished": True}, s.optimizer,
                        s.scheduler)  # fmt: skip
