"""SFT throughput as model FLOPs utilisation (MFU) against this machine's measured matmul peak.

    python benchmarks/bench_sft_mfu.py [--out benchmarks/results/sft_mfu.json] [--steps 6]
        [--smollm2-dir /tmp/latentrl_smollm2] [--skip-smollm2] [--threads N] [--bf16]

The peak is measured here: the best FLOP/s of fp32 ``torch.mm`` on square matrices of 512..2048 with
the same thread count. A training step is the SFT trainer's own computation in CoT mode (``collate``,
``latent_forward``, ``sft_loss``, backward, gradient clipping, AdamW) on a batch of ``arith`` CoT
examples; the median of ``--steps`` steps after two warm-up steps. Model FLOPs: 6 · N · tokens, with N
the parameters that multiply (every parameter except the position embeddings; a tied embedding counted
once, as the LM head) and tokens the non-padding tokens of the batch (``mfu``), or every position
computed (``mfu_padded``). Models: the demo's tiny GPT-2 (4 x 128), GPT-2 6 x 256 and 8 x 512 (char
vocabulary), and SmolLM2-135M (30 x 576, vocabulary 49,152). Target: >= 30% at d >= 256.
``--bf16``: the steps under bf16 autocast (``mixed_precision=bf16``, as the trainer applies it: accelerate's
autocast, and on a CPU SDPA's math attention for the forward, ``latentrl.train.common.autocast``) and the
peak of bf16 ``torch.mm``; on a CPU with AMX tiles the bf16 peak is several times the fp32 one.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

sys.path.insert(0, str(Path(__file__).parent))
from bench_soft import load_model, model_bench_args, start_result, write_result  # noqa: E402

from latentrl.train import common  # noqa: E402
from latentrl.train.sft import sft_loss  # noqa: E402
from latentrl.models import ThinkingConfig, build_tiny_model, collate, encode_example, latent_forward  # noqa: E402
from latentrl.tasks import load_examples  # noqa: E402


def matmul_peak(sizes=(512, 1024, 2048), repeats: int = 5, dtype=torch.float32) -> dict:
    """Best ``dtype`` matmul FLOP/s over ``sizes`` (each timed ``repeats`` times after a warm-up)."""
    best = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        best[n] = 2 * n**3 / min(times)
    return {"flops_by_size": best, "peak_flops": max(best.values())}


def multiplying_params(model) -> int:
    skip = {id(p) for name, p in model.named_parameters() if name.endswith(("wpe.weight", "position_embeddings.weight"))}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def sft_steps(model, tok, batch_size: int, steps: int, bf16: bool = False) -> dict:
    thinking = ThinkingConfig.from_tokenizer(tok, "discrete") if "<|latent|>" in tok.get_vocab() else ThinkingConfig()
    examples = load_examples("arith", "train", batch_size * (steps + 2), seed=0)
    enc = [encode_example(tok, e.question, e.steps, e.answer, thinking) for e in examples]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    accelerator = Accelerator(cpu=True, mixed_precision="bf16" if bf16 else "no")
    model.train()
    times, tokens, padded = [], [], []
    for i in range(steps + 2):
        b = collate(enc[i * batch_size : (i + 1) * batch_size], tok.pad_token_id, thinking.latent_token_id)
        t = time.perf_counter()
        with common.autocast(accelerator, model, tuple(b.input_ids.shape)):  # the trainer's autocast and attention
            loss = sft_loss(latent_forward(model, b.input_ids, b.attention_mask, b.latent_mask).logits, b.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t)
            tokens.append(int(b.attention_mask.sum()))
            padded.append(b.input_ids.numel())
    math = common.math_attention(accelerator, model, tuple(b.input_ids.shape))
    return {"step_seconds": times, "tokens": tokens, "padded_tokens": padded, "math_attention": math}


def case(name: str, model, tok, batch_size: int, steps: int, peak: float, bf16: bool = False) -> dict:
    run = sft_steps(model, tok, batch_size, steps, bf16)
    n = multiplying_params(model)
    per_s = statistics.median(t / s for t, s in zip(run["tokens"], run["step_seconds"]))
    per_s_padded = statistics.median(t / s for t, s in zip(run["padded_tokens"], run["step_seconds"]))
    out = {"params_multiplying": n, "batch_size": batch_size, "tokens_per_s": per_s, "mfu": 6 * n * per_s / peak,
           "mfu_padded": 6 * n * per_s_padded / peak, **run}  # fmt: skip
    print(f"{name}: N = {n / 1e6:.2f}M, {per_s:.0f} tokens/s, MFU {100 * out['mfu']:.1f}% "
          f"({100 * out['mfu_padded']:.1f}% counting padding)")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = model_bench_args(__doc__.splitlines()[0], "benchmarks/results/sft_mfu.json")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast, against the bf16 matmul peak")
    args = ap.parse_args(argv)
    result = start_result("sft_mfu", args.threads)
    result["precision"] = "bf16 autocast" if args.bf16 else "float32"
    result["peak"] = peak = matmul_peak(dtype=torch.bfloat16 if args.bf16 else torch.float32)
    print(f"measured {'bf16' if args.bf16 else 'fp32'} matmul peak: {peak['peak_flops'] / 1e9:.1f} GFLOP/s "
          f"({torch.get_num_threads()} threads)")  # fmt: skip
    result["cases"] = {}
    for name, shape, bs in [("gpt2 4x128", (4, 128, 4), 64), ("gpt2 6x256", (6, 256, 8), 64), ("gpt2 8x512", (8, 512, 8), 64)]:
        model, tok = build_tiny_model("gpt2", n_layer=shape[0], n_embd=shape[1], n_head=shape[2], max_length=256)
        result["cases"][name] = case(name, model, tok, bs, args.steps, peak["peak_flops"], args.bf16)
    if not args.skip_smollm2:
        model, tok, _, _ = load_model("smollm2", args.smollm2_dir)
        result["cases"]["SmolLM2-135M"] = case("SmolLM2-135M", model, tok, 16, max(2, args.steps // 2), peak["peak_flops"],
                                              args.bf16)  # fmt: skip
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
