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

import importlib
import math
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from latentrl.config import save_config
from latentrl.exploration import make_exploration
from latentrl.losses import group_advantages, policy_loss
from latentrl.models import save_checkpoint
from latentrl.models.checkpoint import load_trainer_state
from latentrl.rollout import Rollout, completion_logps, roll_out, score
from latentrl.tasks import load_examples
from latentrl.train import common
from latentrl.train.grpo_config import GRPOConfig


def load_reward_func(spec: str):
    """``module:function`` -> the function (a clear error when it cannot be found)."""
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"reward function {spec!r} must be given as module:function")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load reward function {spec!r}: {err}") from err


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
    return out


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
        **{f"rewards/{k}/mean": v.mean().item() for k, v in rollout.reward_parts.items()},
    }


def make_rollout(model, tokenizer, thinking, batch, cfg: GRPOConfig, exploration, seeds, generator, reward_funcs, weights,
                 accelerator=None):
    """Steps 2-3: generate, score, and compute the advantages into one :class:`Rollout`.

    With several processes each one rolls out its own whole groups; the rewards of all processes
    are gathered so that ``scale_rewards="batch"`` sees the whole batch, as in TRL.
    """
    gen, texts = roll_out(model, tokenizer, thinking, batch, num_generations=cfg.num_generations,
                          max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                          top_p=cfg.top_p, exploration=exploration, seeds=seeds, generator=generator)  # fmt: skip
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
    mask = gen.completion_mask
    if cfg.mask_truncated_completions:
        mask = mask * (~gen.truncated)[:, None].long()
    rollout = Rollout(gen.prompt_ids, gen.prompt_mask, gen.latent_mask, gen.completion_ids, mask, gen.seeds,
                      rewards, parts, advantages, texts, gen.truncated, gen.thoughts)  # fmt: skip
    return rollout, time.perf_counter() - t


def keep_informative_groups(rollout: Rollout, G: int) -> Rollout:
    """Drop groups whose rewards are all equal (their advantages are all zero)."""
    informative = rollout.rewards.view(-1, G).std(1) > 1e-6  # [N]
    rows = informative.repeat_interleave(G).nonzero().flatten().cpu()  # indexes CPU and device fields alike
    return rollout.select(rows)


def update(model, rollout: Rollout, cfg: GRPOConfig, exploration, optimizer, scheduler, accelerator=None) -> dict[str, float]:
    """Step 5: ``num_iterations`` clipped-GRPO updates on the rollout (micro-batched).

    Normalisers are global: ``B`` counts the rollouts and ``tokens`` the completion tokens of all
    processes, and each process's loss is scaled by the number of processes, so that averaging the
    gradients over processes gives the gradient of the whole batch's loss (``bnpo`` normalises by
    each micro-batch's tokens, as TRL does per device). Every process calls this, also one whose
    rows were all dropped: the collectives must match. Returned metrics are global.
    """
    world, mb, rows = accelerator.num_processes if accelerator else 1, cfg.per_device_train_batch_size, len(rollout.seeds)
    n_rows, n_tokens = common.sum_over_processes([rows, int(rollout.completion_mask.sum())], accelerator)
    B, tokens = max(1, int(n_rows)), torch.tensor(max(1.0, n_tokens))
    metrics: dict[str, float] = {}
    timings = {"time/logprob": 0.0, "time/backward": 0.0}
    for _ in range(cfg.num_iterations):
        for start in range(0, len(rollout.seeds), mb):
            part = rollout.select(slice(start, start + mb))
            t = time.perf_counter()
            lp = completion_logps(model, part, exploration, cfg.temperature)
            timings["time/logprob"] += time.perf_counter() - t
            loss, m = policy_loss(lp.logps, part.old_logps, part.advantages, part.completion_mask, part.ref_logps,
                                  cfg.beta, cfg.epsilon, cfg.epsilon_high, cfg.loss_type, cfg.importance_sampling_level,
                                  cfg.max_completion_length, num_items_in_batch=tokens)  # fmt: skip
            if cfg.loss_type != "dapo":
                loss = loss * len(part.seeds) / B  # micro-batch means -> batch mean
            loss = loss * world  # gradients are averaged over processes below
            t = time.perf_counter()
            loss.backward()
            timings["time/backward"] += time.perf_counter() - t
            m["entropy"] = (lp.entropy * part.completion_mask).sum().item() / max(1, part.completion_mask.sum().item())
            for k, v in m.items():  # micro-batch values -> this process's mean over its rows
                metrics[k] = metrics.get(k, 0.0) + v * len(part.seeds) / (rows * cfg.num_iterations)
            # the batch loss is the mean over processes of the scaled micro-batch losses' sums; stored
            # per row so that the row-weighted mean over processes below gives it
            metrics["loss"] = metrics.get("loss", 0.0) + loss.item() * B / (world * rows * cfg.num_iterations)
        if world > 1:
            common.average_gradients(model, accelerator)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
        metrics["grad_norm"] = float(norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return {**common.mean_over_processes(metrics, accelerator, weight=rows), **timings}


@torch.no_grad()
def fill_old_and_ref_logps(model, ref_model, rollout: Rollout, cfg: GRPOConfig, exploration) -> None:
    """Step 4: log-probs of the sampling policy (when reused over several iterations) and of the
    reference, both under the rollout's recorded noise."""
    mb = cfg.per_device_train_batch_size
    parts = [rollout.select(slice(s, s + mb)) for s in range(0, len(rollout.seeds), mb)]
    if not parts:  # every group of this process was dropped (skip_zero_std_groups)
        return
    if cfg.num_iterations > 1:
        rollout.old_logps = torch.cat([completion_logps(model, p, exploration, cfg.temperature).logps for p in parts])
    if ref_model is not None:
        rollout.ref_logps = torch.cat([completion_logps(ref_model, p, exploration, cfg.temperature).logps for p in parts])


def train_grpo(cfg: GRPOConfig) -> Path:
    """Run GRPO; returns the final checkpoint directory (``output_dir/final``).

    Several processes (``accelerate launch`` / ``torchrun``) split each step's prompts: every
    process rolls out and scores whole groups, the rewards are gathered for the advantages, and the
    gradients are averaged, so N processes train like one process with the same global batch.
    """
    from accelerate import Accelerator
    from transformers import get_scheduler

    # setup: model, reference, data, exploration, optimizer, resume point
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # cpu=True: several CPU processes over gloo
    world, rank = accelerator.num_processes, accelerator.process_index
    G, n_prompts = cfg.num_generations, cfg.generation_batch_size // cfg.num_generations
    if not cfg.model_name_or_path:
        raise ValueError("grpo needs model_name_or_path (an SFT checkpoint)")
    if n_prompts % world:
        raise ValueError(f"generation_batch_size / num_generations = {n_prompts} prompts per step cannot be split "
                         f"over {world} processes; make it a multiple of {world}")  # fmt: skip
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    common.seed_everything(cfg.seed)
    resume_dir = common.latest_checkpoint(out)
    model, tokenizer, thinking = common.load_or_build(str(resume_dir or cfg.model_name_or_path), {}, cfg.seed)
    model.to(accelerator.device)
    # the frozen reference is always the starting checkpoint, also when resuming
    ref_model = None
    if cfg.beta:
        ref_model = common.load_or_build(cfg.model_name_or_path, {}, cfg.seed)[0].eval().requires_grad_(False)
        ref_model.to(accelerator.device)
    pool = load_examples(cfg.task, "train", cfg.num_train_examples, cfg.data_seed, cfg.data_path, **cfg.task_kwargs)
    validation = []
    if cfg.eval_steps:
        validation = common.validation_examples(cfg.task, cfg.eval_n, cfg.data_seed, cfg.task_kwargs, cfg.eval_data_path)
    reward_funcs = [load_reward_func(s) for s in cfg.reward_funcs]
    weights = cfg.reward_weights or [1.0] * len(reward_funcs)
    exploration = make_exploration(cfg.exploration, **cfg.exploration_kwargs())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=cfg.max_steps * cfg.num_iterations)  # fmt: skip
    state = load_trainer_state(resume_dir) if resume_dir else None
    step = state["global_step"] if state else 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    main = accelerator.is_main_process
    if main:
        save_config(cfg, out / "config.yaml")
    logger = common.RunLogger(out, cfg.report_to, main)
    show = not cfg.disable_tqdm and accelerator.is_local_main_process
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"grpo[{cfg.exploration}]", disable=None if show else True)  # None: off when not a terminal

    def checkpoint(path: Path) -> None:
        accelerator.wait_for_everyone()
        if main:
            save_checkpoint(path, model, tokenizer, thinking, dict(global_step=step, optimizer=optimizer.state_dict(),
                                                                   scheduler=scheduler.state_dict()))  # fmt: skip
            common.prune_checkpoints(out, cfg.save_total_limit)

    def evaluate_now() -> float:
        return common.validation_accuracy(model, tokenizer, thinking, validation, accelerator, cfg.max_completion_length)

    if cfg.eval_steps and step == 0:
        logger.log(0, {"eval/accuracy": evaluate_now()})
    while step < cfg.max_steps:
        # 1. prompts and one noise seed per rollout, both functions of (seed, step): resumable;
        #    each process takes its own slice of whole groups
        rng = random.Random(cfg.seed * 1_000_003 + step)
        batch = rng.sample(pool, n_prompts) if n_prompts <= len(pool) else rng.choices(pool, k=n_prompts)
        seeds = rollout_seeds(cfg.seed, step, n_prompts * G)
        local = n_prompts // world
        batch, seeds = batch[rank * local : (rank + 1) * local], seeds[rank * local * G : (rank + 1) * local * G]
        generator = torch.Generator(accelerator.device).manual_seed(cfg.seed * 1_000_003 + step * world + rank)
        # 2-3. roll out, score, advantages
        model.eval()
        t = time.perf_counter()
        rollout, reward_time = make_rollout(model, tokenizer, thinking, batch, cfg, exploration, seeds, generator,
                                            reward_funcs, weights, accelerator)  # fmt: skip
        metrics = {"time/rollout": time.perf_counter() - t - reward_time, "time/reward": reward_time,
                   **grpo_step_metrics(rollout, G), **group_diagnostics(rollout, G)}  # fmt: skip
        if cfg.skip_zero_std_groups:
            rollout = keep_informative_groups(rollout, G)
        # 4-5. old / reference log-probs under the recorded noise, then the updates
        metrics = common.mean_over_processes(metrics, accelerator)  # every process has G-row groups here
        rows_everywhere = common.sum_over_processes([len(rollout.seeds)], accelerator)[0]
        if rows_everywhere:  # the model stays in eval mode: the only noise is the recorded one
            t = time.perf_counter()
            fill_old_and_ref_logps(model, ref_model, rollout, cfg, exploration)
            metrics["time/old_ref_logprob"] = time.perf_counter() - t
            metrics.update(update(model, rollout, cfg, exploration, optimizer, scheduler, accelerator))
        step += 1
        bar.update(1)
        # 6. log, evaluate, checkpoint
        if cfg.eval_steps and step % cfg.eval_steps == 0:
            metrics["eval/accuracy"] = evaluate_now()
        if step % cfg.logging_steps == 0 or "eval/accuracy" in metrics:
            metrics["learning_rate"] = scheduler.get_last_lr()[0]
            logger.log(step, metrics)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", zero_std=f"{metrics['frac_reward_zero_std']:.2f}")
        if cfg.save_steps and step % cfg.save_steps == 0:
            checkpoint(out / f"checkpoint-{step}")
    bar.close()
    checkpoint(out / "final")
    accelerator.wait_for_everyone()  # no process returns before final/ is written
    logger.close()
    return out / "final"
