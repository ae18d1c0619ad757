"""GRPO steps under glibc's allocator against tcmalloc (``latentrl.allocator``), in alternating runs.

    python benchmarks/bench_allocator.py [--checkpoint /tmp/latentrl_smollm2] [--steps 4] [--rounds 2]
        [--mixed-precision bf16] [--max-completion-length 64] [--allocators system,auto]
        [--out benchmarks/results/allocator.json]

Each run is ``latentrl grpo`` in a fresh process with ``LATENTRL_ALLOCATOR`` set to one of ``--allocators``
(``system``, ``auto`` = tcmalloc where found, or a library's path), 64 rollouts (8 prompts x 8) of the
checkpoint (default: SmolLM2-135M converted by ``bench_soft.smollm2_folder``; ``tiny``: a 4 x 128 GPT-2 CoT-SFT'd
once into a temporary folder by ``bench_trl_grpo.build_checkpoint``), discrete decoding, the trainer's defaults otherwise. The runs alternate
(system, auto, system, auto, ...). Per run: the median of the gaps between consecutive ``log.jsonl`` records
(steps 2 on: the first warms up) and of each ``time/*`` phase, the child's minor page faults and system
seconds (``getrusage`` of the finished child), and its logged losses and gradient norms, which must be equal
under every allocator (the arithmetic is the same; the JSON says whether they were).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_soft import smollm2_folder, start_result, write_result  # noqa: E402
from bench_trl_grpo import build_checkpoint  # noqa: E402

from latentrl.train.run import read_log  # noqa: E402


def one_run(checkpoint: str, allocator: str, args, out: Path) -> dict:
    cmd = ["latentrl", "grpo", f"model_name_or_path={checkpoint}", f"output_dir={out}", f"max_steps={args.steps}",
           f"max_completion_length={args.max_completion_length}", f"mixed_precision={args.mixed_precision}",
           "save_steps=0", "eval_n=8", "overwrite_output_dir=true"]  # fmt: skip
    env = {**os.environ, "LATENTRL_ALLOCATOR": allocator, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    steps = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    gaps = [b["time"] - a["time"] for a, b in zip(steps, steps[1:])]
    phases = sorted({k for r in steps for k in r if k.startswith("time/")})
    return {
        "allocator": allocator,
        "recorded_allocator": json.loads((out / "run.json").read_text()).get("allocator"),
        "step_s": statistics.median(gaps),
        "steps_s": gaps,
        "phases_s": {k: statistics.median(r[k] for r in steps[1:]) for k in phases},
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "system_s": after.ru_stime - before.ru_stime,
        "losses": [r["loss"] for r in steps],
        "grad_norms": [r["grad_norm"] for r in steps],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="/tmp/latentrl_smollm2", help="HF folder, or 'tiny'")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mixed-precision", default="bf16", choices=["no", "bf16"])
    ap.add_argument("--max-completion-length", type=int, default=64)
    ap.add_argument("--allocators", default="system,auto")
    ap.add_argument("--out", default="benchmarks/results/allocator.json")
    args = ap.parse_args()
    result = start_result("allocator", None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.checkpoint == "tiny":
            checkpoint = build_checkpoint(work / "sft")
        else:
            checkpoint = str(smollm2_folder(args.checkpoint)[0])
        allocators = args.allocators.split(",")
        runs = []
        for r in range(args.rounds):
            for a in allocators:
                runs.append({"round": r, **one_run(checkpoint, a, args, work / f"run_{r}_{len(runs)}")})
                print(f"round {r} {a}: {runs[-1]['step_s']:.2f} s a step, {runs[-1]['minor_faults']} faults", flush=True)
    by = {a: [x for x in runs if x["allocator"] == a] for a in allocators}
    base = allocators[0]
    result.update({
        "checkpoint": args.checkpoint, "steps": args.steps, "mixed_precision": args.mixed_precision,
        "max_completion_length": args.max_completion_length, "runs": runs,
        "median_step_s": {a: statistics.median(x["step_s"] for x in xs) for a, xs in by.items()},
        "ratio_to_first": {a: statistics.median(x["step_s"] / y["step_s"] for x, y in zip(xs, by[base]))
                           for a, xs in by.items()},  # fmt: skip
        "same_losses": all(x["losses"] == runs[0]["losses"] and x["grad_norms"] == runs[0]["grad_norms"] for x in runs),
    })
    print(json.dumps({k: result[k] for k in ("median_step_s", "ratio_to_first", "same_losses")}, indent=1))
    write_result(result, args.out)


if __name__ == "__main__":
    main()
