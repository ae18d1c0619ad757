"""How much signal each exploration source gives a GRPO group, before any training.

    python benchmarks/exploration_diversity.py --checkpoint DIR [--prompts 64] [--generations 8] [--out FILE]

For one rollout batch of the checkpoint (training prompts of ``arith``, ``--prompts`` x
``--generations``, the trainer's own ``make_rollout``) and each exploration setting below, it reports
the mean reward, the share of groups whose rewards are all equal (``frac_reward_zero_std``: those
groups give no gradient), the distinct answers per group, and the mean pairwise distance of a group's
latent trajectories. A setting that leaves fewer zero-std groups without lowering the reward gives
GRPO more to learn from. Every setting sees the same prompts and the same answer-sampling generator.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
from pathlib import Path

import torch

from latentrl.exploration import make_exploration
from latentrl.models import load_checkpoint
from latentrl.rewards import answer_match
from latentrl.tasks import load_examples
from latentrl.train.grpo import GRPOConfig, group_diagnostics, grpo_step_metrics, make_rollout, rollout_seeds

SETTINGS: dict[str, dict] = {
    "answer sampling only (T=1)": dict(exploration="none"),
    "thought p=0.1": dict(dropout_p=0.1),
    "thought p=0.3": dict(dropout_p=0.3),
    "thought p=0.5": dict(dropout_p=0.5),
    "mlp p=0.2": dict(dropout_p=0.2, dropout_sites=["mlp"]),
    "mlp+attn p=0.1, prefill": dict(dropout_p=0.1, dropout_sites=["mlp", "attn"], dropout_cover_prefill=True),
    "mlp+attn p=0.2, prefill": dict(dropout_p=0.2, dropout_sites=["mlp", "attn"], dropout_cover_prefill=True),
    "thought p=0.1, greedy answers": dict(dropout_p=0.1, temperature=0.0),
    "none, greedy answers": dict(exploration="none", temperature=0.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--data-seed", type=int, default=1001, help="Seed of the training prompts drawn.")
    ap.add_argument("--out", default="benchmarks/results/exploration_diversity.json")
    args = ap.parse_args()

    model, tok, thinking = load_checkpoint(args.checkpoint)
    model.eval()
    pool = load_examples("arith", "train", 20 * args.prompts, args.data_seed)
    batch = random.Random(0).sample(pool, args.prompts)
    B = args.prompts * args.generations
    rows = {}
    for name, overrides in SETTINGS.items():
        cfg = GRPOConfig(model_name_or_path=args.checkpoint, num_generations=args.generations,
                         generation_batch_size=B, **overrides)  # fmt: skip
        exploration = make_exploration(cfg.exploration, **cfg.exploration_kwargs())
        rollout, _ = make_rollout(model, tok, thinking, batch, cfg, exploration, rollout_seeds(0, 0, B),
                                  torch.Generator().manual_seed(0), [answer_match], [1.0])  # fmt: skip
        m = {**grpo_step_metrics(rollout, args.generations), **group_diagnostics(rollout, args.generations)}
        rows[name] = {k: m[k] for k in ("reward", "frac_reward_zero_std", "latent/distinct_answers")}
        rows[name]["latent/trajectory_distance"] = m.get("latent/trajectory_distance")
        print(f"{name:32s} reward {m['reward']:.3f}  zero-std groups {m['frac_reward_zero_std']:.2f}  "
              f"distinct answers {m['latent/distinct_answers']:.2f}", flush=True)  # fmt: skip
    result = {"checkpoint": args.checkpoint, "prompts": args.prompts, "generations": args.generations,
              "date": datetime.date.today().isoformat(), "torch": torch.__version__, "settings": rows}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
