"""``latentrl eval``: greedy accuracy, pass@k, maj@k and tokens used, for any thinking mode.

Outputs ``metrics.json`` and ``predictions.jsonl`` (one line per example of the greedy run).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from latentrl.exploration.args import ExplorationArgs
from latentrl.models.thinking.args import EngineArgs, ThinkingArgs
from latentrl.eval.metrics import mean_maj_at_k, mean_pass_at_k
from latentrl.models import ThinkingConfig, encode_prompt
from latentrl.models.layout import check_fits_context, model_context_length
from latentrl.rewards import answers_match, extract_answer, normalize_answer


class EvalConfig(ThinkingArgs, EngineArgs, ExplorationArgs):
    """Config of ``latentrl eval``."""

    @model_validator(mode="after")
    def _bma_needs_latent_thinking(self):
        if self.mc_masks and self.thinking_mode == "soft":
            raise ValueError("mc_masks (dropout masks on the latent phase) does not apply to soft thinking")
        return self

    checkpoint: str = Field("", description="Checkpoint directory (or hub id).")
    task: str | None = Field(None, description="Task name (synthetic) or file format.")
    data_path: str | None = Field(None, description="A JSONL file of question/steps/answer.")
    split: Literal["train", "validation", "test"] = Field("test", description="Split of a synthetic task.")
    n: int | None = Field(200, ge=1, description="Examples evaluated (None: all of a file).")
    samples: int = Field(1, ge=1, description="Sampled completions per example for pass@k / maj@k.")
    temperature: float = Field(1.0, ge=0, description="Temperature of the sampled completions.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus of the sampled completions.")
    max_new_tokens: int = Field(64, ge=1, description="Completion length cap.")
    num_latents: int | None = Field(None, ge=0, description="Thoughts at inference (default: latentrl.json).")
    mc_masks: int = Field(
        0, ge=0, description="M: Bayesian model average, greedy answers under M dropout masks (the dropout_* keys, as "
                             "in grpo) and a majority vote.",
    )  # fmt: skip
    greedy_exploration: bool = Field(
        True, description="The greedy run uses the exploration source too (false: it is deterministic and the source "
                          "perturbs only the sampled runs, e.g. Gumbel noise on soft thinking's samples).",
    )  # fmt: skip
    batch_size: int = Field(64, ge=1, description="Prompts per generation batch.")
    seed: int = Field(0, description="Seed of the task data and of sampling.")
    task_kwargs: dict[str, int | float | str] = Field({}, description="Generator knobs.")
    out: str = Field("runs/eval", min_length=1, description="Output directory.")
    progress: bool = Field(True, description="Progress bars (off inside training).")



@dataclass
class EvalResult:
    metrics: dict
    predictions: list[dict]


def ks_up_to(samples: int) -> list[int]:
    """Powers of two below ``samples``, and ``samples`` itself."""
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return ks + [samples]


@dataclass
class Generated:
    """Per row (problem x sample) of a batched evaluation run."""

    texts: list[str]
    completion_ids: list[list[int]]
    answer_tokens: list[int]  # completion tokens that are not soft thinking steps
    thinking_steps: list[int]  # soft thinking steps or latent thoughts


def per_solved(tokens: int, solved: int) -> float | None:
    """Tokens generated per correct answer (every token counted, wrong answers' too); None if none solved."""
    return tokens / solved if solved else None


def _generate_in_batches(model, tokenizer, thinking, prompts, cfg: EvalConfig, samples: int, temperature: float,
                         desc: str, exploration=None) -> Generated:  # fmt: skip
    from latentrl.models.thinking import thinking_mode

    mode = thinking_mode(thinking.thinking_mode)
    if exploration is None:
        exploration = cfg.build_exploration()
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed)
    per_batch = max(1, cfg.batch_size // samples)
    out = Generated([], [], [], [])
    for i in tqdm(range(0, len(prompts), per_batch), desc=desc, leave=False, disable=None if cfg.progress else True):
        chunk = prompts[i : i + per_batch]
        seeds = torch.arange(i * samples, (i + len(chunk)) * samples) + 1  # sample j of problem p: seed p*M + j + 1
        gen = mode.generate(model, chunk, thinking, exploration=exploration, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, num_generations=samples, max_new_tokens=cfg.max_new_tokens,
                            temperature=temperature, top_p=cfg.top_p, seeds=seeds, generator=generator, **cfg.engine())  # fmt: skip
        steps = gen.thinking_steps()
        out.texts += gen.decode(tokenizer)
        out.completion_ids += gen.completion_lists()
        out.thinking_steps += steps.tolist()
        soft = gen.soft.soft_mask.sum(1) if gen.soft is not None else torch.zeros_like(steps)
        out.answer_tokens += (gen.completion_mask.sum(1) - soft).tolist()
    return out


def evaluate(model, tokenizer, thinking: ThinkingConfig, examples, cfg: EvalConfig) -> EvalResult:
    """Greedy run for accuracy and predictions; ``cfg.samples`` sampled runs for pass@k and maj@k.

    Tokens used: ``mean_thinking_steps`` (latent thoughts or soft steps) and ``mean_answer_tokens``
    (the completion's tokens, chain of thought included in discrete mode), ``mean_tokens`` their sum.
    """
    model.eval()
    prompts = [encode_prompt(tokenizer, ex.question, thinking, cfg.num_latents) for ex in examples]
    where = f"{cfg.data_path or cfg.task or 'the examples'} (prompt + max_new_tokens)"
    check_fits_context([len(p) + cfg.max_new_tokens for p in prompts], model_context_length(model), where)
    from latentrl.exploration.none import NoExploration

    clean = None if cfg.greedy_exploration else NoExploration()
    greedy = _generate_in_batches(model, tokenizer, thinking, prompts, cfg, 1, 0.0, "greedy", exploration=clean)
    predictions, correct = [], []
    for ex, prompt, text, ids, steps in zip(examples, prompts, greedy.texts, greedy.completion_ids, greedy.thinking_steps):
        pred = extract_answer(text)
        ok = answers_match(pred, ex.answer)
        correct.append(ok)
        predictions.append(dict(question=ex.question, answer=ex.answer, prompt_ids=prompt, completion_ids=ids,
                                completion=text, thinking_steps=steps, prediction=pred, correct=ok))  # fmt: skip
    n = len(examples)
    thinking_steps, answer_tokens = sum(greedy.thinking_steps), sum(greedy.answer_tokens)
    metrics = {
        "n": n,
        "accuracy": sum(correct) / n,
        "mean_thinking_steps": thinking_steps / n,
        "mean_answer_tokens": answer_tokens / n,
        "mean_tokens": (thinking_steps + answer_tokens) / n,  # thoughts and soft steps count as generated tokens
        "tokens_per_solved": per_solved(thinking_steps + answer_tokens, sum(correct)),
        "mean_latent_tokens": thinking_steps / n if thinking.thinking_mode == "coconut" else 0.0,
        "mean_completion_tokens": sum(len(c) for c in greedy.completion_ids) / n,
        "num_latents": max(greedy.thinking_steps) if thinking.thinking_mode == "coconut" and n else 0,
        "thinking_mode": thinking.thinking_mode,
    }
    if cfg.samples > 1:
        metrics.update(sampled_metrics(model, tokenizer, thinking, prompts, examples, cfg))
    if cfg.mc_masks > 0:
        metrics.update(bma_metrics(model, tokenizer, thinking, prompts, examples, cfg))
    return EvalResult(metrics, predictions)


def sampled_metrics(model, tokenizer, thinking, prompts, examples, cfg: EvalConfig) -> dict:
    """pass@k (unbiased, from all samples) and maj@k (mean over disjoint blocks of k samples)."""
    K, n = cfg.samples, len(examples)
    sampled = _generate_in_batches(model, tokenizer, thinking, prompts, cfg, K, cfg.temperature, "sampled")
    preds = [[extract_answer(t) for t in sampled.texts[i * K : (i + 1) * K]] for i in range(n)]
    hits = [[answers_match(p, ex.answer) for p in row] for row, ex in zip(preds, examples)]
    normed = [[normalize_answer(p) if p is not None else None for p in row] for row in preds]
    golds = [ex.answer for ex in examples]
    metrics = {"samples": K, "sample_temperature": cfg.temperature,
               "mean_sampled_tokens": (sum(sampled.thinking_steps) + sum(sampled.answer_tokens)) / (n * K),
               "mean_sample_accuracy": sum(map(sum, hits)) / (n * K),
               "sampled_tokens_per_solved": per_solved(sum(sampled.thinking_steps) + sum(sampled.answer_tokens), sum(map(sum, hits)))}  # fmt: skip
    for k in ks_up_to(K):
        metrics[f"pass@{k}"] = mean_pass_at_k(hits, k)
        metrics[f"maj@{k}"] = mean_maj_at_k(normed, golds, k, match=answers_match)
    return metrics


def greedy_accuracy(model, tokenizer, thinking: ThinkingConfig, examples, max_new_tokens: int = 64) -> float:
    """Greedy accuracy on ``examples``: what the trainers' periodic evaluation reports."""
    cfg = EvalConfig(max_new_tokens=max_new_tokens, samples=1, progress=False)
    return evaluate(model, tokenizer, thinking, examples, cfg).metrics["accuracy"]


def bma_metrics(model, tokenizer, thinking, prompts, examples, cfg: EvalConfig) -> dict:
    """Bayesian model average: greedy answers under M dropout masks per problem, majority vote."""
    from latentrl.eval.metrics import majority_vote
    from latentrl.exploration import DropoutExploration

    M = cfg.mc_masks
    dropout = DropoutExploration(**cfg.dropout_kwargs())
    texts = _generate_in_batches(model, tokenizer, thinking, prompts, cfg, M, 0.0, "bma", exploration=dropout).texts
    single, voted = 0, 0
    for i, ex in enumerate(examples):
        preds = [extract_answer(t) for t in texts[i * M : (i + 1) * M]]
        single += sum(answers_match(p, ex.answer) for p in preds)
        vote = majority_vote([normalize_answer(p) if p is not None else None for p in preds])
        voted += answers_match(vote, ex.answer)
    n = len(examples)
    return {"bma_accuracy": voted / n, "mc_mask_accuracy": single / (n * M), "mc_masks": M, "mc_dropout_p": cfg.dropout_p}


def write_eval(result: EvalResult, out: str | os.PathLike) -> None:
    """``metrics.json`` and ``predictions.jsonl`` in ``out``, each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(result.metrics, indent=2) + "\n")
    os.replace(tmp, out / "metrics.json")
    tmp = out / "predictions.jsonl.tmp"
    with tmp.open("w") as f:
        for row in result.predictions:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, out / "predictions.jsonl")


def run_eval(cfg: EvalConfig) -> EvalResult:
    """Load the checkpoint and the examples, evaluate, write the outputs."""
    from latentrl.fsutil import check_output_dir
    from latentrl.models import load_checkpoint
    from latentrl.tasks import load_examples

    if not cfg.checkpoint:
        raise ValueError("eval needs --checkpoint DIR")
    if cfg.task is None and cfg.data_path is None:
        raise ValueError("give --task NAME or --data FILE")
    check_output_dir(Path(cfg.out), what="out")
    task = cfg.task or "jsonl"
    examples = load_examples(task, cfg.split, cfg.n, cfg.seed, cfg.data_path, **cfg.task_kwargs)
    model, tokenizer, thinking = load_checkpoint(cfg.checkpoint)
    thinking = cfg.thinking_for(thinking, tokenizer, model.get_input_embeddings().num_embeddings)
    cfg.check_source_fits_mode(thinking.thinking_mode)
    result = evaluate(model, tokenizer, thinking, examples, cfg)
    write_eval(result, cfg.out)
    return result
