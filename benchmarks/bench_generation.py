"""Throughput of cached, batched latent generation against the naive definition.

The cached path is :func:`latentrl.models.latent.generate`: all rollouts in one batch, one prefill
over the prompt before the first ``<|latent|>``, one cached single-position step per latent thought,
then cached answer decoding. The naive path is :func:`latentrl.models.latent.naive_generate`: batch 1,
no KV cache, the whole prefix recomputed at every thought and every answer token.

Setup: the demo-sized untrained model (4 layers, width 128, 4 heads), coconut mode with 4 latent
thoughts, prompts from the ``arith`` test split. ``eos_token_id=-1`` never occurs, so every rollout
runs exactly ``--new-tokens`` answer tokens on both paths. Decoding is greedy on both, so the naive
path is run row by row exactly as the batched path lays the rows out (rollouts x prompts). Both paths
are checked to produce identical tokens on the rows the naive path ran.

    python benchmarks/bench_generation.py [--out benchmarks/results/generation.json]
        [--rollouts 64] [--new-tokens 32] [--family gpt2] [--naive-rows N] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
try:
    import latentrl  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))

from latentrl.models.build import build_tiny_model  # noqa: E402
from latentrl.models.latent import generate, naive_generate  # noqa: E402
from latentrl.models.layout import ThinkingConfig, encode_prompt  # noqa: E402
from latentrl.tasks import load_examples  # noqa: E402

NEVER = -1  # an eos id that never occurs: fixed-length rollouts


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    """Median wall time of ``repeats`` calls of ``fn`` (after the caller's warm-up)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def pick_rows(num_prompts: int, generations: int, n: int) -> list[int]:
    """``n`` row indices spread over the prompts (row ``i*G + j`` is rollout ``j`` of prompt ``i``)."""
    rows = [i * generations + j for j in range(generations) for i in range(num_prompts)]  # round robin
    return sorted(rows[:n])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generation.json"))
    parser.add_argument("--rollouts", type=int, default=64, help="total rollouts (prompts x generations)")
    parser.add_argument("--generations", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--new-tokens", type=int, default=32, help="answer tokens per rollout (forced)")
    parser.add_argument("--num-latents", type=int, default=4)
    parser.add_argument("--family", default="gpt2", choices=["gpt2", "llama", "qwen2"])
    parser.add_argument(
        "--naive-rows", type=int, default=None,
        help="rows the naive path runs (default: all, or 8 when a warm-up estimate exceeds --naive-budget)",
    )  # fmt: skip
    parser.add_argument("--naive-budget", type=float, default=60.0, help="seconds for the 3 naive repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.rollouts % args.generations:
        parser.error("--rollouts must be a multiple of --generations")

    model, tok = build_tiny_model(args.family, n_layer=4, n_embd=128, n_head=4, max_length=256)
    model.eval()
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=args.num_latents)
    num_prompts = args.rollouts // args.generations
    examples = load_examples("arith", "test", num_prompts, seed=0)
    prompts = [encode_prompt(tok, e.question, cfg) for e in examples]
    rows = [p for p in prompts for _ in range(args.generations)]  # the layout generate uses
    T, K = args.new_tokens, args.num_latents
    tokens_per_rollout = K + T  # thoughts + answer tokens

    def cached():
        return generate(
            model, prompts, latent_token_id=cfg.latent_token_id, eos_token_id=NEVER, pad_token_id=tok.pad_token_id,
            num_generations=args.generations, max_new_tokens=T, temperature=0.0,
        )  # fmt: skip

    def naive_row(r: int) -> list[int]:
        return naive_generate(model, rows[r], latent_token_id=cfg.latent_token_id, eos_token_id=NEVER, max_new_tokens=T)

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    # warm-up (also sizes the naive subset)
    cached()
    start = time.perf_counter()
    naive_row(0)
    naive_one = time.perf_counter() - start
    n_naive = args.naive_rows
    if n_naive is None:
        n_naive = args.rollouts if naive_one * args.rollouts * args.repeats <= args.naive_budget else 8
    n_naive = max(1, min(n_naive, args.rollouts))
    naive_rows = pick_rows(num_prompts, args.generations, n_naive)

    cached_s, cached_times, gen = timed(cached, args.repeats)
    naive_s, naive_times, naive_out = timed(lambda: [naive_row(r) for r in naive_rows], args.repeats)

    # the two must agree token for token on every compared row
    assert gen.completion_ids.shape == (args.rollouts, T), gen.completion_ids.shape
    for r, ref in zip(naive_rows, naive_out):
        got = gen.completion_ids[r].tolist()
        assert len(ref) == T and got == ref, f"row {r}: cached {got} != naive {ref}"

    naive_per_rollout = naive_s / n_naive
    naive_scaled = naive_per_rollout * args.rollouts
    result = {
        "benchmark": "generation",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "env": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch_threads_default": args.threads is None,
            "platform": platform.platform(),
            "loadavg_before": load_before,  # 1/5/15-min load: other processes skew the timings
            "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "setup": {
            "family": args.family,
            "model": "build_tiny_model(n_layer=4, n_embd=128, n_head=4, max_length=256), untrained",
            "parameters": sum(p.numel() for p in model.parameters()),
            "thinking_mode": "coconut",
            "num_latents": K,
            "task": "arith test seed=0",
            "prompts": num_prompts,
            "generations_per_prompt": args.generations,
            "rollouts": args.rollouts,
            "prompt_tokens": [len(p) for p in prompts],
            "new_tokens": T,
            "tokens_per_rollout": tokens_per_rollout,
            "decoding": "greedy, eos_token_id=-1 (never), fixed length",
            "repeats": args.repeats,
            "statistic": "median",
        },
        "cached": {
            "seconds": cached_s,
            "times": cached_times,
            "rollouts_per_s": args.rollouts / cached_s,
            "tokens_per_s": args.rollouts * tokens_per_rollout / cached_s,
        },
        "naive": {
            "rows_measured": n_naive,
            "rows": naive_rows,
            "seconds_measured": naive_s,
            "times": naive_times,
            "seconds_per_rollout": naive_per_rollout,
            "seconds_scaled_to_rollouts": naive_scaled,
            "scaled": n_naive < args.rollouts,
            "rollouts_per_s": 1.0 / naive_per_rollout,
            "tokens_per_s": tokens_per_rollout / naive_per_rollout,
        },
        "speedup": naive_scaled / cached_s,
        "speedup_best_of_repeats": min(naive_times) / n_naive * args.rollouts / min(cached_times),
        "target_speedup": 20.0,
        "identical_tokens_rows": n_naive,
    }
    result["meets_target"] = result["speedup"] >= result["target_speedup"]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    c, n = result["cached"], result["naive"]
    note = f" (measured on {n_naive} rows, scaled per rollout)" if n["scaled"] else ""
    print(
        f"generation: {args.family}, coconut K={K}, {num_prompts} prompts x {args.generations} = {args.rollouts} "
        f"rollouts, {T} answer tokens, {torch.get_num_threads()} threads"
    )
    print(f"{'path':<8} {'s / 64 rollouts':>16} {'rollouts/s':>11} {'tokens/s':>10}".replace("64", str(args.rollouts)))
    print(f"{'cached':<8} {cached_s:>16.3f} {c['rollouts_per_s']:>11.1f} {c['tokens_per_s']:>10.0f}")
    print(f"{'naive':<8} {naive_scaled:>16.3f} {n['rollouts_per_s']:>11.1f} {n['tokens_per_s']:>10.0f}{note}")
    if load_before and load_before[0] > (os.cpu_count() or 1):
        print(f"warning: load average {load_before[0]:.1f} on {os.cpu_count()} CPUs: other processes skew the timings")
    print(
        f"speedup {result['speedup']:.1f}x median (best of repeats {result['speedup_best_of_repeats']:.1f}x, "
        f"target >= 20x); tokens identical on {n_naive} rows; wrote {out}"
    )
    return result


if __name__ == "__main__":
    main()
