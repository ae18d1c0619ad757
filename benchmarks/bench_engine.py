"""Rollout throughput of latentrl's engine: discrete decoding against ``transformers``' ``generate`` at the
same batch, and Coconut rollouts against discrete rollouts of the same total length.

    python benchmarks/bench_engine.py [--out benchmarks/results/engine.json] [--rounds 5]
        [--smollm2-dir /tmp/latentrl_smollm2] [--skip-smollm2] [--threads N] [--no-compile] [--bf16] [--smollm2-prompts 4]

Every rollout runs exactly ``--positions`` positions (an EOS id that never occurs; ``min_new_tokens`` on
the HF side). Sampling at T = 1 with no top-k / top-p on both sides. Discrete: ``latentrl.models.generate``
against ``model.generate(do_sample=True, ...)`` on the same left-padded prompt ids. Coconut: K = 4
continuous thoughts then ``positions - K`` answer tokens against ``positions`` discrete tokens (the
thoughts count as positions; the coconut prompt carries the latent markers). Runs alternate (latentrl,
HF, coconut, latentrl, ...) after one warm-up of each; each ratio is the median over rounds of the
ratio to the latentrl discrete run of the same round, so it survives a noisy machine. Two more discrete
variants of the engine: ``static`` (``cache_implementation="static"``: a preallocated KV cache) and
``compiled`` (static cache + ``torch_compile``: inductor on the CPU; its first call, which compiles, is
recorded apart; ``--no-compile`` skips it), and ``growing``: the dynamic cache as HF grows it, by concatenation
(``latentrl.models.latent.reserved_cache`` swapped for a plain ``DynamicCache``; the default reserves the
positions and writes in place), and ``sdpa_attention``: the engine with HF's stock ``sdpa`` attention instead of
latentrl's one-query attention (``latentrl.models.attention``; ``generate``'s runs use stock ``sdpa`` too, so
they time HF as it comes). ``--bf16``: everything under bf16 autocast. Models: the
demo-sized untrained GPT-2 (64 rollouts = 8 prompts x 8) and SmolLM2-135M (16 rollouts = 4 x 4; ``--smollm2-prompts
16``: 64).
Soft thinking's cost per step is ``bench_soft.py``'s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).parent))
from bench_soft import load_model, med, model_bench_args, start_result, write_result  # noqa: E402

import latentrl.models.latent as latent  # noqa: E402
from latentrl.models import ThinkingConfig, encode_prompt, generate  # noqa: E402
from latentrl.models.latent import left_pad  # noqa: E402
from latentrl.models.build import add_latent_tokens, ban_layout_tokens  # noqa: E402
from latentrl.tasks import load_examples  # noqa: E402

NEVER_EOS = -1
K_THOUGHTS = 4


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def growing_cache(fn):
    """``fn`` run with generation's KV cache grown by concatenation (HF's ``DynamicCache``) instead of reserved."""

    def run():
        reserved = latent.reserved_cache
        latent.reserved_cache = lambda model, capacity: DynamicCache(config=model.config)
        try:
            return fn()
        finally:
            latent.reserved_cache = reserved

    return run


def with_attention(model, implementation: str, fn):
    """``fn`` run with the model's attention set to ``implementation`` (HF's stock ``"sdpa"``), then set back."""

    def run():
        mine = model.config._attn_implementation
        model.set_attn_implementation(implementation)
        try:
            return fn()
        finally:
            model.set_attn_implementation(mine)

    return run


def hf_generate(model, ids, mask, T: int, pad_id: int):
    return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                          max_new_tokens=T, min_new_tokens=T, pad_token_id=pad_id, eos_token_id=None)  # fmt: skip


def engine_case(name: str, model, tok, n_prompts: int, G: int, T: int, rounds: int, desc: str,
                compile_step: bool) -> dict:
    examples = load_examples("arith", "test", n_prompts, seed=0)
    discrete = ThinkingConfig.from_tokenizer(tok, "discrete") if "<|latent|>" in tok.get_vocab() else ThinkingConfig()
    coconut = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=K_THOUGHTS)
    d_prompts = [encode_prompt(tok, e.question, discrete) for e in examples]
    c_prompts = [encode_prompt(tok, e.question, coconut, K_THOUGHTS) for e in examples]
    rows = [p for p in d_prompts for _ in range(G)]
    ids, mask = left_pad(rows, tok.pad_token_id)
    decode = dict(eos_token_id=NEVER_EOS, pad_token_id=tok.pad_token_id, num_generations=G, temperature=1.0)
    runs = {
        "latentrl": lambda: generate(model, d_prompts, latent_token_id=None, max_new_tokens=T, **decode),
        "hf_generate": with_attention(model, "sdpa", lambda: hf_generate(model, ids, mask, T, tok.pad_token_id)),
        "sdpa_attention": with_attention(model, "sdpa", lambda: generate(model, d_prompts, latent_token_id=None,
                                                                         max_new_tokens=T, **decode)),
        "coconut": lambda: generate(model, c_prompts, latent_token_id=coconut.latent_token_id,
                                    max_new_tokens=T - K_THOUGHTS, **decode),
        "static": lambda: generate(model, d_prompts, latent_token_id=None, max_new_tokens=T,
                                   cache_implementation="static", **decode),
        "growing": growing_cache(lambda: generate(model, d_prompts, latent_token_id=None, max_new_tokens=T, **decode)),
    }  # fmt: skip
    if compile_step:
        runs["compiled"] = lambda: generate(model, d_prompts, latent_token_id=None, max_new_tokens=T,
                                            cache_implementation="static", torch_compile=True, **decode)  # fmt: skip
    out = generate(model, d_prompts, latent_token_id=None, max_new_tokens=T, **decode)
    assert out.completion_mask.sum(1).eq(T).all(), "every discrete rollout must run T positions"
    with torch.no_grad():
        warmup = {k: timed(fn) for k, fn in runs.items()}  # the compiled step's includes its compilation
        times = {k: [] for k in runs}
        for _ in range(rounds):
            for k, fn in runs.items():
                times[k].append(timed(fn))
    B = n_prompts * G
    ratio = lambda k: med([a / b for a, b in zip(times[k], times["latentrl"])])  # noqa: E731
    result = {
        "model": desc, "rollouts": B, "positions": T, "thoughts": K_THOUGHTS, "seconds": times,
        "rollouts_per_s": {k: B / med(v) for k, v in times.items()},
        "tokens_per_s": {k: B * T / med(v) for k, v in times.items()},
        "hf_over_latentrl": ratio("hf_generate"),  # > 1: latentrl is faster
        "coconut_over_discrete": ratio("coconut"),
        "static_over_dynamic": ratio("static"),
        "growing_over_reserved": ratio("growing"),  # > 1: reserving the cache's positions saves time
        "sdpa_over_one_query_attention": ratio("sdpa_attention"),  # > 1: latentrl's one-query attention saves time
        **({"compiled_over_dynamic": ratio("compiled"), "compile_seconds": warmup["compiled"]} if compile_step else {}),
        "warmup_seconds": warmup,
    }  # fmt: skip
    print(f"{name}: latentrl {result['tokens_per_s']['latentrl']:.0f} tok/s, HF generate "
          f"{result['tokens_per_s']['hf_generate']:.0f} tok/s (HF/latentrl time {result['hf_over_latentrl']:.2f}); "
          f"coconut/discrete time {result['coconut_over_discrete']:.2f}; static/dynamic cache "
          f"{result['static_over_dynamic']:.2f}; growing/reserved cache {result['growing_over_reserved']:.2f}; "
          f"HF sdpa / one-query attention {result['sdpa_over_one_query_attention']:.2f}"
          + (f"; static + torch.compile / dynamic {result['compiled_over_dynamic']:.2f} (first call "
             f"{result['compile_seconds']:.0f} s)" if compile_step else ""))  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = model_bench_args(__doc__.splitlines()[0], "benchmarks/results/engine.json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--positions", type=int, default=32)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (its first call compiles)")
    ap.add_argument("--bf16", action="store_true", help="every variant under bf16 autocast")
    ap.add_argument("--smollm2-prompts", type=int, default=4, help="SmolLM2's rollouts: this many prompts x 4")
    args = ap.parse_args(argv)
    result = start_result("engine", args.threads) | {"cases": {}, "bf16": args.bf16}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        return run_cases(args, result)


def run_cases(args, result: dict) -> dict:
    for name in ["tiny"] + ([] if args.skip_smollm2 else ["smollm2"]):
        model, tok, _, desc = load_model(name, args.smollm2_dir)
        if "<|latent|>" not in tok.get_vocab():  # a plain HF model: add the latent markers (as the trainer does)
            add_latent_tokens(model, tok)
            ban_layout_tokens(model, tok)
        n_prompts, G = (8, 8) if name == "tiny" else (args.smollm2_prompts, 4)
        result["cases"][name] = engine_case(name, model, tok, n_prompts, G, args.positions, args.rounds, desc,
                                            compile_step=not args.no_compile)  # fmt: skip
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
