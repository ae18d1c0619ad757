"""Time one GRPO step on the demo model by phase (rollout, reward, log-prob, backward) with peak memory.

    python benchmarks/bench_grpo_step.py [--checkpoint DIR] [--prompts 8] [--generations 8] [--out FILE]

Without ``--checkpoint`` it uses an untrained demo-sized model (4 layers, width 128) in coconut mode
with 4 thoughts, whose sampled answers mostly run to ``--max-completion-length`` (the mean completion
length is reported). The step is the trainer's own code
(``make_rollout``, ``fill_old_and_ref_logps``, ``update``) with Dropout-GRPO's shared mask.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
import transformers

from latentrl.exploration import make_exploration
from latentrl.models import ThinkingConfig, build_tiny_model, load_checkpoint
from latentrl.rewards import answer_match
from latentrl.tasks import load_examples
from latentrl.train.grpo import GRPOConfig, fill_old_and_ref_logps, make_rollout, rollout_seeds, update


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_step(model, tok, thinking, cfg, ref_model, step: int) -> dict[str, float]:
    batch = load_examples("arith", "train", cfg.generation_batch_size // cfg.num_generations, step)
    seeds = rollout_seeds(cfg.seed, step, cfg.generation_batch_size)
    exploration = make_exploration(cfg.exploration, **cfg.exploration_kwargs())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    t = time.perf_counter()
    rollout, reward_s = make_rollout(model, tok, thinking, batch, cfg, exploration, seeds,
                                     torch.Generator().manual_seed(step), [answer_match], [1.0])  # fmt: skip
    rollout_s = time.perf_counter() - t - reward_s
    t = time.perf_counter()
    fill_old_and_ref_logps(model, ref_model, rollout, cfg, exploration)
    old_ref_s = time.perf_counter() - t
    m = update(model, rollout, cfg, exploration, opt, sched)
    return {"rollout": rollout_s, "reward": reward_s, "old_ref_logprob": old_ref_s,
            "logprob": m["time/logprob"], "backward": m["time/backward"],
            "mean_completion_tokens": rollout.completion_mask.sum(1).float().mean().item()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--max-completion-length", type=int, default=16)
    ap.add_argument("--beta", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/grpo_step.json")
    args = ap.parse_args()
    if args.checkpoint:
        model, tok, thinking = load_checkpoint(args.checkpoint)
    else:
        model, tok = build_tiny_model("gpt2", n_layer=4, n_embd=128, n_head=4, max_length=256)
        thinking = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=4)
    model.eval()
    B = args.prompts * args.generations
    cfg = GRPOConfig(model_name_or_path="bench", num_generations=args.generations, generation_batch_size=B,
                     per_device_train_batch_size=B, max_completion_length=args.max_completion_length,
                     beta=args.beta, exploration="dropout", dropout_p=0.1)  # fmt: skip
    ref_model = None
    if args.beta:
        import copy

        ref_model = copy.deepcopy(model).requires_grad_(False)
    one_step(model, tok, thinking, cfg, ref_model, step=0)  # warm-up
    runs = [one_step(model, tok, thinking, cfg, ref_model, step=i + 1) for i in range(args.repeats)]
    tokens = statistics.mean(r.pop("mean_completion_tokens") for r in runs)
    phases = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    result = {
        "benchmark": "grpo_step",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "env": {"torch": torch.__version__, "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                "loadavg": os.getloadavg()},  # fmt: skip
        "setup": {"checkpoint": args.checkpoint or "untrained demo-size gpt2 (4x128), coconut, 4 thoughts",
                  "prompts": args.prompts, "generations": args.generations, "rollouts": B,
                  "max_completion_length": args.max_completion_length, "beta": args.beta,
                  "exploration": "dropout p=0.1 rollout scope, thought site", "repeats": args.repeats},  # fmt: skip
        "seconds_median": phases,
        "step_seconds": sum(phases.values()),
        "mean_completion_tokens": tokens,
        "peak_rss_mib": peak_rss_mib(),
    }
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"GRPO step, {B} rollouts ({args.prompts} prompts x {args.generations}):")
    for k, v in phases.items():
        print(f"  {k:16s} {v * 1000:8.1f} ms")
    print(f"  {'total':16s} {result['step_seconds'] * 1000:8.1f} ms   peak RSS {result['peak_rss_mib']:.0f} MiB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
