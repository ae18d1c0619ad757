"""A BuPO step (phase 1: the clipped objective on layer l's internal policy) against a GRPO step.

    python benchmarks/bench_bupo_step.py [--smollm2 DIR] [--repeats 5] [--out FILE]

Each pair draws one rollout batch and times, on it and on copies of the same weights, the part of the
step that differs (the old log-probs, the recomputation and the backward) once with the full policy and
once with BuPO's read-out, in alternating order; the rollout itself is the same for both and is added
to each. The ratio is the median over pairs, so it survives a noisy machine. Cases: a tiny GPT-2 in
discrete mode, the same in Coconut mode with the shared dropout mask, a tiny Llama in soft mode with
Gumbel noise and, with ``--smollm2``, the real SmolLM2-135M checkpoint (``latentrl convert-gguf``) in
discrete mode.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers

from latentrl.models import ThinkingConfig, build_tiny_model
from latentrl.models.readout import FULL_POLICY, PolicyHead
from latentrl.rewards import answer_match
from latentrl.tasks import load_examples
from latentrl.train.common import load_or_build
from latentrl.train.grpo import GRPOConfig, fill_old_and_ref_logps, make_rollout, rollout_seeds, update


def timed_update(model, rollout, cfg, exploration, head) -> float:
    """Old log-probs, recomputation and backward of one step with ``head``'s policy; seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    rollout = copy.copy(rollout)
    t = time.perf_counter()
    fill_old_and_ref_logps(model, None, rollout, cfg, exploration, head=head)
    update(model, rollout, cfg, exploration, opt, sched, head=head)
    return time.perf_counter() - t


def bench_case(name, model, tok, thinking, cfg: GRPOConfig, head: PolicyHead, repeats: int) -> dict:
    exploration = cfg.build_exploration()
    pairs = []
    for i in range(repeats + 1):  # the first pair warms up
        batch = load_examples("arith", "train", cfg.generation_batch_size // cfg.num_generations, i)
        seeds = rollout_seeds(cfg.seed, i, cfg.generation_batch_size)
        t = time.perf_counter()
        rollout, _ = make_rollout(model, tok, thinking, batch, cfg, exploration, seeds,
                                  torch.Generator().manual_seed(i), [answer_match], [1.0])  # fmt: skip
        rollout_s = time.perf_counter() - t
        order = [FULL_POLICY, head] if i % 2 == 0 else [head, FULL_POLICY]
        times = {h.full: timed_update(copy.deepcopy(model), rollout, cfg, exploration, h) for h in order}
        pairs.append({"rollout": rollout_s, "grpo_update": times[True], "bupo_update": times[False]})
    pairs = pairs[1:]
    med = {k: statistics.median(p[k] for p in pairs) for k in pairs[0]}
    step_ratio = statistics.median((p["rollout"] + p["bupo_update"]) / (p["rollout"] + p["grpo_update"]) for p in pairs)
    update_ratio = statistics.median(p["bupo_update"] / p["grpo_update"] for p in pairs)
    print(f"{name}: GRPO step {1000 * (med['rollout'] + med['grpo_update']):.0f} ms, BuPO step "
          f"{1000 * (med['rollout'] + med['bupo_update']):.0f} ms; ratio {step_ratio:.3f} (update alone {update_ratio:.3f})")  # fmt: skip
    return {"case": name, "head": {"layer": head.layer, "module": head.module, "final_norm": head.final_norm},
            "rollouts": cfg.generation_batch_size, "max_completion_length": cfg.max_completion_length,
            "seconds_median": med, "step_ratio_median": step_ratio, "update_ratio_median": update_ratio,
            "pairs": pairs}  # fmt: skip


def grpo_cfg(**keys) -> GRPOConfig:
    base = dict(model_name_or_path="bench", num_generations=8, generation_batch_size=64, per_device_train_batch_size=64,
                max_completion_length=24, temperature=1.0)  # fmt: skip
    return GRPOConfig(**(base | keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2", help="HF folder of SmolLM2-135M (latentrl convert-gguf)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/bupo_step.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    cases = []
    gpt2, tok = build_tiny_model("gpt2", n_layer=4, n_embd=128, n_head=4, max_length=256)
    cases.append(bench_case("tiny gpt2 4x128, discrete", gpt2, tok, ThinkingConfig.from_tokenizer(tok, "discrete"),
                            grpo_cfg(exploration="none"), PolicyHead(2, "residual", False), args.repeats))  # fmt: skip
    cases.append(bench_case("tiny gpt2 4x128, coconut 4 thoughts + shared dropout mask", gpt2, tok,
                            ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=4),
                            grpo_cfg(exploration="dropout", dropout_p=0.1, max_completion_length=12),
                            PolicyHead(2, "residual", False), args.repeats))  # fmt: skip
    llama, ltok = build_tiny_model("llama", n_layer=4, n_embd=128, n_head=4, max_length=256)
    soft_cfg = grpo_cfg(thinking_mode="soft", exploration="gumbel", max_thinking_steps=12)
    soft = soft_cfg.thinking_for(ThinkingConfig.from_tokenizer(ltok, "discrete"), ltok, llama.get_input_embeddings().num_embeddings)
    cases.append(bench_case("tiny llama 4x128, soft (12 steps) + Gumbel", llama, ltok, soft, soft_cfg,
                            PolicyHead(2, "ffn", True), args.repeats))  # fmt: skip
    if args.smollm2:
        model, stok, thinking = load_or_build(args.smollm2, {}, seed=0)  # as the trainer loads it (markers added)
        cases.append(bench_case("SmolLM2-135M, discrete", model, stok, ThinkingConfig.from_tokenizer(stok, "discrete"),
                                grpo_cfg(exploration="none", generation_batch_size=16, per_device_train_batch_size=16,
                                         num_generations=4, max_completion_length=32),
                                PolicyHead(20, "residual", False), args.repeats))  # fmt: skip
    result = {
        "benchmark": "bupo_step",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "env": {"torch": torch.__version__, "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "loadavg": os.getloadavg()},  # fmt: skip
        "target": "BuPO step <= 1.1x GRPO step",
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
