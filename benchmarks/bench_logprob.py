"""The GRPO update's log-prob recomputation (forward + backward) on SmolLM2-135M, with and without its two
savings: the shared prefill (rows of the same prompt run it once) and the chunked LM head (the forward
stops at the hidden states; ``head_token_logps`` makes the logits a vocabulary chunk at a time).

    python benchmarks/bench_logprob.py [--prompts 4] [--generations 8] [--completion 64] [--rounds 2]
        [--soft] [--data ../shared/data/gsm8k/test.jsonl] [--smollm2-dir /tmp/latentrl_smollm2] [--threads N]
        [--out benchmarks/results/logprob.json]

Two prompt sets: the ``arith`` questions of the GRPO benchmarks (8 tokens, no template) and the first GSM8K
test questions in SmolLM2's chat template (as ``gsm8k_soft_smollm2.py`` builds them). Each prompt has
``--generations`` rows with ``--completion`` completion tokens drawn uniformly (the cost does not depend on
which tokens), all unmasked. Four variants, alternating within each round after one warm-up: ``baseline``
(neither saving: ``SHARE_AT_LEAST`` above 1 and ``plain_head`` off), ``shared``, ``chunked``, ``both`` (the
default path). Times are ``completion_logps`` (forward) and ``backward`` of ``sum(logps)``; the script
checks that each variant's log-probs are the baseline's within 1e-3 and reports the largest difference.
``--soft``: SofT-GRPO's recomputation instead (default ``--out benchmarks/results/logprob_soft.json``): the
first half of each completion is soft thinking steps, each recording ``SOFT_K`` distinct uniform ids and
uniform perturbed logits in [-3, 0); the chunked head scores the answer token and the kept ids together.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_soft import med, model_bench_args, smollm2_folder, start_result, write_result  # noqa: E402
from gsm8k_soft_smollm2 import DEFAULT_DATA, chat_prompt  # noqa: E402

import latentrl.models.latent as latent  # noqa: E402
from latentrl.exploration import NoExploration  # noqa: E402
from latentrl.models import ThinkingConfig, encode_prompt, load_checkpoint  # noqa: E402
from latentrl.models.build import never_sampled_ids  # noqa: E402
from latentrl.models.latent import Generation, left_pad  # noqa: E402
from latentrl.models.thinking.soft import SoftSettings, SoftTrace  # noqa: E402
from latentrl.rollout import completion_logps  # noqa: E402
from latentrl.tasks import load_examples  # noqa: E402

VARIANTS = {"baseline": (False, False), "shared": (True, False), "chunked": (False, True), "both": (True, True)}


SOFT_K = 5


def record(prompts: list[list[int]], G: int, T: int, vocab: int, banned, pad_id: int, soft: bool) -> Generation:
    """A grouped rollout record: each prompt ``G`` times, ``T`` uniform completion tokens per row (``soft``: the
    first ``T // 2`` of them soft thinking steps)."""
    ids, mask = left_pad([p for p in prompts for _ in range(G)], pad_id)
    g = torch.Generator().manual_seed(0)
    completion = torch.randint(0, vocab, (len(ids), T), generator=g)
    completion[torch.isin(completion, torch.tensor(banned, dtype=torch.long))] = 0
    ones = torch.ones_like(completion)
    return Generation(ids, mask, torch.zeros_like(ids, dtype=torch.bool), completion, ones, torch.zeros(ones.shape),
                      torch.zeros(len(ids), dtype=torch.bool), None, torch.arange(len(ids)),
                      soft=soft_trace(completion, vocab, banned, g) if soft else None)  # fmt: skip


def soft_trace(completion: torch.Tensor, vocab: int, banned, g: torch.Generator) -> SoftTrace:
    """Soft steps at the first half of the positions, each with ``SOFT_K`` distinct ids (none banned)."""
    (B, T), k = completion.shape, SOFT_K
    soft = torch.zeros((B, T), dtype=torch.bool)
    soft[:, : T // 2] = True
    allowed = torch.tensor(sorted(set(range(vocab)) - set(banned)), dtype=torch.long)
    ids = torch.stack([allowed[torch.randperm(len(allowed), generator=g)[:k]] for _ in range(B * T)]).view(B, T, k)
    noisy = -3 * torch.rand((B, T, k), generator=g)
    false = torch.zeros_like(soft)
    return SoftTrace(soft, ids * soft[..., None], noisy * soft[..., None], 1.0, SoftSettings(top_k=k), torch.zeros(B, T),
                     false, false, stochastic=True)  # fmt: skip


def timed_variant(model, gen: Generation, variant: str, share_default: float) -> tuple[float, float, torch.Tensor]:
    share, chunked = VARIANTS[variant]
    latent.SHARE_AT_LEAST = share_default if share else 2.0  # above 1: never shared
    model._latentrl_plain_head = chunked
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    logps = completion_logps(model, gen, NoExploration()).logps
    t1 = time.perf_counter()
    logps.sum().backward()
    return t1 - t, time.perf_counter() - t1, logps.detach()


def main(argv=None) -> dict:
    ap = model_bench_args(__doc__.splitlines()[0], "benchmarks/results/logprob.json")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--soft", action="store_true", help="SofT-GRPO's recomputation (soft steps, then answer tokens)")
    args = ap.parse_args(argv)
    if args.soft and args.out == ap.get_default("out"):
        args.out = "benchmarks/results/logprob_soft.json"
    result = start_result("logprob_soft" if args.soft else "logprob", args.threads)
    folder, _ = smollm2_folder(args.smollm2_dir)
    model, tok, thinking = load_checkpoint(folder)
    model.train()
    share_default, banned = latent.SHARE_AT_LEAST, never_sampled_ids(model)
    sets = {
        "arith": [encode_prompt(tok, e.question, ThinkingConfig()) for e in load_examples("arith", "train", args.prompts, seed=0)],
        "gsm8k_chat": [chat_prompt(tok, e.question)[1] for e in load_examples("gsm8k", n=args.prompts, path=args.data)],
    }  # fmt: skip
    result |= {"command": "python benchmarks/bench_logprob.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "model": f"SmolLM2-135M-Instruct ({folder})", "rollouts": args.prompts * args.generations,
               "completion_tokens": args.completion, "cases": {}}  # fmt: skip
    for name, prompts in sets.items():
        gen = record(prompts, args.generations, args.completion, model.config.vocab_size, banned, tok.pad_token_id, args.soft)
        timed_variant(model, gen, "both", share_default)  # warm-up
        times = {v: [] for v in VARIANTS}
        logps = {}
        for _ in range(args.rounds):
            for v in VARIANTS:
                fwd, bwd, logps[v] = timed_variant(model, gen, v, share_default)
                times[v].append((fwd, bwd))
                print(f"{name} {v}: forward {fwd:.2f} s, backward {bwd:.2f} s", flush=True)
        diff = {v: float((logps[v] - logps["baseline"]).abs().max()) for v in VARIANTS}
        assert max(diff.values()) < 1e-3, diff
        base = med([f + b for f, b in times["baseline"]])
        result["cases"][name] = {
            "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts), "positions": gen.prompt_ids.shape[1] + args.completion,
            "max_abs_logp_diff_vs_baseline": diff,
            **{v: {"forward_s": med([f for f, _ in ts]), "backward_s": med([b for _, b in ts]),
                   "total_s": med([f + b for f, b in ts]), "total_vs_baseline": med([f + b for f, b in ts]) / base}
               for v, ts in times.items()},
        }  # fmt: skip
    latent.SHARE_AT_LEAST, model._latentrl_plain_head = share_default, None
    write_result(result, args.out)
    for name, case in result["cases"].items():
        print(f"{name} ({case['prompt_tokens_mean']:.0f}-token prompts, {case['positions']} positions): " +
              ", ".join(f"{v} {case[v]['total_s']:.1f} s ({case[v]['total_vs_baseline']:.2f})" for v in VARIANTS))  # fmt: skip
    return result


if __name__ == "__main__":
    main()
