"""Small kernels the engine swapped, each against what it replaced, in one process.

    python benchmarks/bench_kernels.py [--threads 2] [--rounds 7] [--out benchmarks/results/kernels.json]

(a) GELU (``latentrl.models.activations``): HF's ``NewGELUActivation`` (GPT-2's ``gelu_new``, seven element-wise
    ops) against the fused ``GELUTanh`` it is swapped for: a decoding step's activations ``[64, 1, 512]`` (forward,
    no gradient) and a GRPO update's ``[64, 40, 512]`` (forward and backward).
(b) the tiny GPT-2 (4 x 128, the demo's and the TRL benchmark's shape, untrained) through one update-sized forward
    and backward (64 rows x 40 positions, the log-probs of the last 33), with HF's modules and with the swap.
(c) the token draws (``latentrl.models.sampling``): ``row_uniforms`` once per step for 32 steps against one
    ``draw_table`` of 32 steps and a column read per step, 64 rows (the engine hashes blocks of ``DRAW_BLOCK`` = 64
    steps as it reaches them).

Variants alternate within each round; the figure is the median over rounds of each variant's time (µs or s).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_soft import start_result, write_result  # noqa: E402


def seconds(fn, repeat: int) -> float:
    fn()  # warm
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def alternate(variants: dict, rounds: int, repeat: int) -> dict:
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for k, fn in variants.items():
            times[k].append(seconds(fn, repeat))
    return {k: statistics.median(v) for k, v in times.items()}


def gelu_cases(rounds: int) -> dict:
    from transformers.activations import GELUTanh, NewGELUActivation

    ours, theirs = GELUTanh(), NewGELUActivation()
    x = torch.randn(64, 1, 512)
    y = torch.randn(64, 40, 512, requires_grad=True)

    def backward(act):
        return lambda: act(y).sum().backward()

    with torch.no_grad():
        decode = alternate({"NewGELU": lambda: theirs(x), "fused": lambda: ours(x)}, rounds, 500)
    update = alternate({"NewGELU": backward(theirs), "fused": backward(ours)}, rounds, 20)
    return {"decode_step_us": {k: v * 1e6 for k, v in decode.items()}, "update_ms": {k: v * 1e3 for k, v in update.items()}}


def tiny_update(rounds: int) -> dict:
    from latentrl.models import build_tiny_model
    from latentrl.models.activations import UNFUSED
    from transformers.activations import NewGELUActivation

    ours, tok = build_tiny_model("gpt2", n_layer=4, n_embd=128, n_head=4, max_length=256)
    theirs = copy.deepcopy(ours)
    for block in theirs.transformer.h:
        block.mlp.act = NewGELUActivation()
    assert not any(type(m) in UNFUSED for m in ours.modules())
    ids = torch.randint(0, len(tok), (64, 40), generator=torch.Generator().manual_seed(0))

    def step(model):
        def run():
            logits = model(input_ids=ids, logits_to_keep=33).logits
            logits.float().log_softmax(-1)[..., 0].mean().backward()

        return run

    return {"seconds": alternate({"NewGELU": step(theirs), "fused": step(ours)}, rounds, 3)}


def draws(rounds: int) -> dict:
    from latentrl.models.sampling import draw_table, row_uniforms, sampling_keys

    keys = sampling_keys(torch.arange(64), torch.Generator().manual_seed(0))

    def per_step():
        for t in range(32):
            row_uniforms(keys, t)

    def table():  # as the loop reads it (``_LiveRows.draw``): a view of a column a step
        u = draw_table(keys, 32)
        for t in range(32):
            u[:, t]

    assert torch.equal(draw_table(keys, 32)[:, 5], row_uniforms(keys, 5))
    return {"rollout_of_32_steps_us": {k: v * 1e6 for k, v in alternate({"per_step": per_step, "table": table}, rounds, 20).items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/kernels.json")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    result = start_result("kernels", args.threads)
    result["gelu"] = gelu_cases(args.rounds)
    print("GELU", result["gelu"])
    result["tiny_update"] = tiny_update(args.rounds)
    print("tiny GPT-2 update", result["tiny_update"])
    result["draws"] = draws(args.rounds)
    print("token draws", result["draws"])
    write_result(result, args.out)


if __name__ == "__main__":
    main()
