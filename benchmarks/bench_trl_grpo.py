"""One discrete-token GRPO step of latentrl against TRL's ``GRPOTrainer``, side by side.

    python benchmarks/bench_trl_grpo.py [--checkpoint DIR] [--prompts 8] [--generations 8] \
        [--max-completion-length 32] [--steps 6] [--pairs 3] [--loss-type dapo] [--scale-rewards none] \
        [--trl-defaults | --bf16] [--latentrl-compile [static|dynamic]] [--compile-update] [--threads N] [--seed 0] \
        [--allocator system|tcmalloc] [--out benchmarks/results/trl_grpo_step.json]

Both sides train the same HF folder: ``--checkpoint`` (e.g. ``/tmp/latentrl_smollm2``) or, without it,
a tiny GPT-2 (4 layers x 128) CoT-SFT'd once by ``latentrl sft mode=cot`` into a temporary folder. Each
run is a fresh subprocess of this script (``--child``) doing ``--steps`` optimizer steps on the same
``arith`` prompts: step k of TRL gets the prompts latentrl's trainer draws at step k (its pool and its
per-step sampling), as the decoded text of latentrl's ``encode_prompt`` ids (the script checks that TRL's
tokenization of that text gives the same ids), each prompt ``--generations`` times; rewards are
``latentrl.rewards:answer_match`` (latentrl's default reward, TRL's signature) on both sides.

Matched settings: prompts x generations rollouts per optimizer step in one micro-batch (TRL:
``per_device_train_batch_size = generation_batch_size``, ``steps_per_generation`` 1), temperature 1,
top-p 1, no top-k, beta 0 (no reference model), ``num_iterations`` 1 (no old-log-prob pass), epsilon 0.2,
``loss_type`` and ``scale_rewards`` as given, AdamW (``torch.optim.AdamW``: TRL ``optim="adamw_torch"``)
lr 2e-4, weight decay 0, constant schedule, grad-norm clip 1, float32, no dropout, no gradient
checkpointing, a log record every step. latentrl: ``train_grpo`` in discrete mode, ``exploration=none``.
``--trl-defaults`` times TRL as a new user's config gets it instead: the same work settings, but TRL's
own defaults for memory, gradient checkpointing on and ``bf16`` autocast (latentrl keeps its defaults:
float32, no checkpointing); not the same arithmetic, so it is reported apart from the matched ratio.
``--bf16``: both sides under bf16 autocast (latentrl ``mixed_precision=bf16``, TRL ``bf16=True``), still
without checkpointing: the matched comparison in bf16, which CPUs with AMX (this machine's) run 3-5x faster
than float32 in their large matmuls.
``--latentrl-compile``: latentrl decodes with ``torch_compile`` and ``cache_implementation=static`` (or, with
``--latentrl-compile dynamic``, its default dynamic cache, from which finished rows leave the batch); its first
step, not timed, compiles; TRL is unchanged. ``--compile-update``: both sides compile the training forward and
backward, latentrl with ``torch_compile_update`` (its recomputation's model calls through ``torch.compile``,
dynamic shapes) and TRL with ``torch_compile`` (HF Trainer's: the model of the loss through ``torch.compile``);
the first, untimed step compiles.
``--allocator``: the memory allocator of both sides' processes, glibc's (``system``, the default, as in the earlier
results) or tcmalloc preloaded into both (``tcmalloc``: what the ``latentrl`` command does by itself where the
system has it, ``latentrl.allocator``; here TRL gets it too). Each run records the allocator it ran with.
Not matched: the sampling streams (each side draws its own completions, hence the reported lengths),
and on a checkpoint whose tokenizer lacks latentrl's three latent markers (SmolLM2) latentrl adds them
(3 more embedding / head rows, initialised as eos's and banned from sampling: their logits are -1e4
in every forward); TRL trains the folder as it is.

Timing: latentrl's seconds per step are the gaps between consecutive ``log.jsonl`` records (so step 2
on; the first step warms up), its phases the records' ``time/*`` keys (``rest``: the gap minus them);
TRL's come from a ``TrainerCallback`` (``on_step_begin`` -> ``on_step_end``, step 2 on; ``cycle`` is
``on_step_end`` to the next, which adds TRL's logging as latentrl's gaps do), its phases from wrapping
the trainer's ``_generate_and_score_completions`` (which holds ``generate`` and ``reward``, the model's
``generate`` and ``_calculate_rewards``) and ``compute_loss`` (``rest``: backward, clipping, optimizer).
The pairs alternate the order (latentrl first, then TRL first, ...). Reported: the median step seconds
of each side over all timed steps, the median over pairs of the ratio of the pairs' medians (latentrl /
TRL), the mean completion length (tokens, eos included) and reward each side produced, and the median
phases. A shared machine skews it: the JSON records the load average before and after each run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
CHILD_MARK = "BENCH_TRL_RESULT "
SIDES = ("latentrl", "trl")
TINY = "tiny gpt2 4x128, latentrl sft mode=cot, 2000 arith examples, 1 epoch"


def quiet() -> None:
    """Silence what TRL / transformers / datasets print on every run (progress bars, advice, deprecations)."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        for module in ("trl", "transformers", "accelerate", "datasets", "torch"):
            warnings.filterwarnings("ignore", category=category, module=module)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("trl").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------- latentrl side


def latentrl_config(spec: dict, output_dir: str):
    """The ``GRPOConfig`` of the latentrl run (also the source of both sides' prompts)."""
    from latentrl.train.grpo import GRPOConfig

    B = spec["prompts"] * spec["generations"]
    return GRPOConfig(
        model_name_or_path=spec["checkpoint"], output_dir=output_dir, task="arith", thinking_mode="discrete",
        exploration="none", num_generations=spec["generations"], generation_batch_size=B,
        per_device_train_batch_size=B, max_completion_length=spec["max_completion_length"], max_steps=spec["steps"],
        temperature=1.0, top_p=1.0, beta=0.0, num_iterations=1, epsilon=0.2, loss_type=spec["loss_type"],
        scale_rewards=spec["scale_rewards"], learning_rate=spec["learning_rate"], weight_decay=0.0,
        lr_scheduler_type="constant", max_grad_norm=1.0, seed=spec["seed"], logging_steps=1, save_steps=0,
        eval_steps=0, disable_tqdm=True, report_to=["jsonl"],
        **({"cache_implementation": spec["latentrl_compile"], "torch_compile": True} if spec.get("latentrl_compile") else {}),
        torch_compile_update=bool(spec.get("compile_update")), mixed_precision="bf16" if spec.get("bf16") else "no",
    )  # fmt: skip


def run_latentrl(spec: dict, work: Path) -> dict:
    """``train_grpo`` for ``steps`` steps; per-step seconds and phases from its ``log.jsonl``."""
    from latentrl.train.grpo import train_grpo
    from latentrl.train.run import read_log

    cfg = latentrl_config(spec, str(work / "latentrl"))
    train_grpo(cfg)
    records = [r for r in read_log(work / "latentrl" / "log.jsonl") if "reward" in r]
    seconds = [b["time"] - a["time"] for a, b in zip(records, records[1:])]  # steps 2..N
    timed = records[1:]
    keys = [k for k in timed[0] if k.startswith("time/")]  # rollout, reward, logprob, backward
    phases = {k[len("time/"):]: statistics.median(r[k] for r in timed) for k in keys}
    phases["rest"] = statistics.median(s - sum(r[k] for k in keys) for s, r in zip(seconds, timed))
    return {"step_seconds": seconds, "phases_median": phases, "first_record": records[0],
            "mean_completion_length": statistics.mean(r["completions/mean_length"] for r in records),
            "reward": statistics.mean(r["reward"] for r in records)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- TRL side


def step_prompts(spec: dict, tokenizer) -> tuple[list[dict], dict]:
    """The prompts latentrl's trainer draws at steps 1..N, in order, as text, with their gold answers,
    and a check that TRL's tokenization of each text gives latentrl's prompt ids."""
    from latentrl.models.layout import ThinkingConfig, encode_prompt
    from latentrl.train import common
    from latentrl.train.grpo import step_inputs

    cfg = latentrl_config(spec, "unused")
    pool, one_process = common.train_examples(cfg), SimpleNamespace(num_processes=1, process_index=0, device="cpu")
    thinking = ThinkingConfig.load(spec["checkpoint"])
    rows, mismatched, tokens = [], 0, []
    for step in range(cfg.max_steps):
        for ex in step_inputs(cfg, pool, step, one_process)[0]:
            ids = encode_prompt(tokenizer, ex.question, thinking)
            text = tokenizer.decode(ids)
            mismatched += tokenizer(text=[text])["input_ids"][0] != ids  # what TRL's _tokenize_prompts does
            tokens.append(len(ids))
            rows.append({"prompt": text, "answer": ex.answer})
    return rows, {"prompts": len(rows), "token_mismatches": mismatched, "mean_prompt_tokens": statistics.mean(tokens)}


def timed(record: list, fn):
    """``fn`` that appends its seconds per call to ``record``."""

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record.append(time.perf_counter() - t)

    return wrapper


def trl_args(spec: dict, output_dir: str):
    """TRL's ``GRPOConfig`` with latentrl's settings (see the module docstring)."""
    import trl

    B = spec["prompts"] * spec["generations"]
    # --trl-defaults: what a new user's config gets, TRL's gradient checkpointing and bf16 autocast
    memory = {} if spec["trl_defaults"] else {"bf16": bool(spec.get("bf16")), "fp16": False, "activation_checkpointing": False}
    return trl.GRPOConfig(
        output_dir=output_dir, use_cpu=True, report_to=[], seed=spec["seed"], **memory,
        per_device_train_batch_size=B, gradient_accumulation_steps=1, steps_per_generation=1,
        num_generations=spec["generations"], max_completion_length=spec["max_completion_length"],
        max_steps=spec["steps"], temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1, epsilon=0.2,
        loss_type=spec["loss_type"], scale_rewards=spec["scale_rewards"], learning_rate=spec["learning_rate"],
        weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, optim="adamw_torch",
        disable_dropout=True, shuffle_dataset=False, logging_steps=1, save_strategy="no", disable_tqdm=True,
        remove_unused_columns=False, dataloader_num_workers=0, torch_compile=bool(spec.get("compile_update")),
    )  # fmt: skip


def step_timer():
    """A ``TrainerCallback`` recording step begin / end times and the logged metrics of each step."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.end, self.logs = [], [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:  # a step's metrics, not the end-of-training summary
                self.logs.append(dict(logs))

    return StepTimer()


def time_phases(trainer) -> dict[str, list[float]]:
    """Seconds of each call of the trainer's phases (one call each per step here)."""
    phases = {"generate_and_score": [], "generate": [], "reward": [], "compute_loss": []}
    trainer._generate_and_score_completions = timed(phases["generate_and_score"],
                                                    trainer._generate_and_score_completions)
    trainer.model.generate = timed(phases["generate"], trainer.model.generate)
    trainer._calculate_rewards = timed(phases["reward"], trainer._calculate_rewards)
    trainer.compute_loss = timed(phases["compute_loss"], trainer.compute_loss)
    return phases


def run_trl(spec: dict, work: Path) -> dict:
    """``trl.GRPOTrainer`` for ``steps`` steps on the same prompts; seconds from a callback."""
    import datasets
    import trl
    from transformers import AutoTokenizer

    from latentrl.rewards import answer_match

    tokenizer = AutoTokenizer.from_pretrained(spec["checkpoint"])
    rows, prompt_check = step_prompts(spec, tokenizer)
    args, timer = trl_args(spec, str(work / "trl")), step_timer()
    trainer = trl.GRPOTrainer(model=spec["checkpoint"], reward_funcs=answer_match, args=args, callbacks=[timer],
                              train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)  # fmt: skip
    phases = time_phases(trainer)
    trainer.train()
    if any(len(v) != spec["steps"] for v in phases.values()):
        raise RuntimeError(f"expected one call of each phase per step, got {({k: len(v) for k, v in phases.items()})}")
    seconds = [e - b for b, e in zip(timer.begin, timer.end)][1:]
    median = {k: statistics.median(v[1:]) for k, v in phases.items()}
    rest = [s - phases["generate_and_score"][i] - phases["compute_loss"][i] for i, s in enumerate(seconds, 1)]
    keys = ("generation_batch_size", "steps_per_generation", "gradient_accumulation_steps", "activation_checkpointing",
            "bf16", "fp16", "scale_rewards", "loss_type", "optim", "top_k", "torch_compile")  # fmt: skip
    settings = {k: getattr(args, k) for k in keys} | {"model_dtype": str(trainer.model.dtype),
                                                      "wrapped_model": type(trainer.model_wrapped).__name__,
                                                      "checkpointing": trainer.model.is_activation_checkpointing}
    return {"step_seconds": seconds, "cycle_seconds": [b - a for a, b in zip(timer.end, timer.end[1:])],
            "phases_median": median | {"rest": statistics.median(rest)}, "prompt_check": prompt_check,
            "trl_settings": settings, "trl_step_time": [r.get("step_time") for r in timer.logs][1:],
            "first_record": timer.logs[0],
            "mean_completion_length": statistics.mean(r["completions/mean_length"] for r in timer.logs),
            "reward": statistics.mean(r["reward"] for r in timer.logs)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- the runs


def child(side: str, spec_path: str) -> None:
    """One run in this (fresh) process; prints its result after ``CHILD_MARK``."""
    quiet()
    import torch

    from latentrl import allocator as alloc

    spec = json.loads(Path(spec_path).read_text())
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix=f"bench_trl_{side}_") as work:
        load_before, t = os.getloadavg(), time.perf_counter()
        result = (run_latentrl if side == "latentrl" else run_trl)(spec, Path(work))
        result |= {"run_seconds": time.perf_counter() - t, "torch_threads": torch.get_num_threads(),
                   "allocator": alloc.current(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()}  # fmt: skip
    print(CHILD_MARK + json.dumps(result), flush=True)


def child_env(allocator: str) -> dict[str, str]:
    """The children's environment: this one without ``LD_PRELOAD`` for ``allocator="system"`` (any preloaded library
    is dropped, not only an allocator), with tcmalloc preloaded for ``allocator="tcmalloc"``."""
    from latentrl import allocator as alloc

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} if allocator == "system" else dict(os.environ)
    if allocator == "tcmalloc":
        library = alloc.find_tcmalloc()
        if library is None:
            raise SystemExit("--allocator tcmalloc: no tcmalloc library found (apt install libtcmalloc-minimal4)")
        env = alloc.preload_env(env, library) or env
    return env


def run_child(side: str, spec_path: Path, allocator: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--spec", str(spec_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env(allocator))
    if proc.returncode != 0:
        raise RuntimeError(f"{side} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARK)][-1]
    return json.loads(line[len(CHILD_MARK):])


def build_checkpoint(folder: Path) -> str:
    """The tiny CoT checkpoint: ``latentrl sft mode=cot`` (about 15 s on 2 cores)."""
    cmd = [sys.executable, "-m", "latentrl.cli", "sft", "mode=cot", f"output_dir={folder}", "n_layer=4", "n_embd=128",
           "num_train_examples=2000", "num_train_epochs=1", "save_steps=0", "disable_tqdm=true"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    return str(folder / "final")


def run_pair(k: int, n: int, spec_path: Path, allocator: str) -> dict:
    """Pair ``k``: both sides, latentrl first in even pairs and TRL first in odd ones."""
    order = SIDES if k % 2 == 0 else SIDES[::-1]
    pair = {"order": list(order), **{side: run_child(side, spec_path, allocator) for side in order}}
    med = {side: statistics.median(pair[side]["step_seconds"]) for side in SIDES}
    pair["ratio"] = med["latentrl"] / med["trl"]
    pair["ratio_cycle"] = med["latentrl"] / statistics.median(pair["trl"]["cycle_seconds"])
    print(f"pair {k + 1}/{n}: latentrl {med['latentrl']:.3f} s, TRL {med['trl']:.3f} s, ratio {pair['ratio']:.2f}",
          flush=True)  # fmt: skip
    return pair


def summarise(pairs: list[dict]) -> dict:
    """Medians over all timed steps, the median pair ratio, completion lengths and phases."""
    med, mean = statistics.median, statistics.mean

    def side(name: str) -> dict:
        runs = [p[name] for p in pairs]
        return {"step_seconds_median": med([s for r in runs for s in r["step_seconds"]]),
                "mean_completion_length": mean(r["mean_completion_length"] for r in runs),
                "reward": mean(r["reward"] for r in runs),
                "phases_median": {k: med([r["phases_median"][k] for r in runs])
                                  for k in runs[0]["phases_median"]}}  # fmt: skip

    out = {name: side(name) for name in SIDES}
    out["trl"]["cycle_seconds_median"] = med([s for p in pairs for s in p["trl"]["cycle_seconds"]])
    out["ratio_latentrl_over_trl"] = med([p["ratio"] for p in pairs])
    out["ratio_latentrl_over_trl_cycle"] = med([p["ratio_cycle"] for p in pairs])
    out["prompt_check"] = pairs[0]["trl"]["prompt_check"]
    return out


def print_table(setup: dict, summary: dict, out: str) -> None:
    print(f"GRPO step, {setup['rollouts']} rollouts ({setup['prompts']} prompts x {setup['generations']}), "
          f"max {setup['max_completion_length']} completion tokens, {setup['pairs']} pairs x {setup['steps']} steps "
          f"(first step of each run not timed); TRL "
          f"{'with its defaults: gradient checkpointing, bf16' if setup['trl_defaults'] else 'matched: ' + ('bf16 autocast' if setup.get('bf16') else 'float32') + ', no checkpointing'}")  # fmt: skip
    print(f"  {'':10s} {'step s':>8s} {'compl. len':>10s} {'reward':>7s}   phases (median s)")
    for side in SIDES:
        s = summary[side]
        phases = "  ".join(f"{k} {v:.3f}" for k, v in s["phases_median"].items())
        print(f"  {side:10s} {s['step_seconds_median']:8.3f} {s['mean_completion_length']:10.1f} "
              f"{s['reward']:7.3f}   {phases}")
    print(f"  latentrl / TRL: {summary['ratio_latentrl_over_trl']:.2f}x (median of pair ratios; "
          f"{summary['ratio_latentrl_over_trl_cycle']:.2f}x against TRL's step-end to step-end cycle)")
    check = summary["prompt_check"]
    same = "identical" if not check["token_mismatches"] else f"DIFFERENT on {check['token_mismatches']}"
    print(f"  prompts: {check['mean_prompt_tokens']:.1f} tokens on average; TRL's tokenization {same} "
          f"({check['prompts']} prompts)")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="HF folder to train (default: a tiny CoT GPT-2 built into a temp folder)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--loss-type", default="dapo", choices=["grpo", "bnpo", "dr_grpo", "dapo"])
    ap.add_argument("--scale-rewards", default="none", choices=["group", "batch", "none"])
    ap.add_argument("--learning-rate", type=float, default=2e-4)
    ap.add_argument("--trl-defaults", action="store_true",
                    help="TRL keeps its own gradient checkpointing and bf16 defaults (as a new user's config would)")
    ap.add_argument("--bf16", action="store_true", help="both sides under bf16 autocast (no checkpointing)")
    ap.add_argument("--latentrl-compile", nargs="?", const="static", choices=["static", "dynamic"],
                    help="latentrl decodes through torch_compile, with its static cache (default) or its dynamic one "
                         "(the first, untimed step compiles)")  # fmt: skip
    ap.add_argument("--compile-update", action="store_true",
                    help="both sides compile the training forward and backward (latentrl torch_compile_update, TRL "
                         "torch_compile; the first, untimed step compiles)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each run (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allocator", default="system", choices=["system", "tcmalloc"],
                    help="both sides' memory allocator: glibc's, or tcmalloc preloaded (as the latentrl command does)")
    ap.add_argument("--out", default="benchmarks/results/trl_grpo_step.json")
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.spec)
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step of each run is not timed)")
    if args.bf16 and args.trl_defaults:
        ap.error("--bf16 and --trl-defaults are two different TRL setups: give one")
    import torch
    import transformers
    import trl

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as tmp:
        checkpoint = args.checkpoint or build_checkpoint(Path(tmp) / "sft")
        spec = {"checkpoint": str(Path(checkpoint).resolve()), "prompts": args.prompts, "generations": args.generations,
                "max_completion_length": args.max_completion_length, "steps": args.steps, "loss_type": args.loss_type,
                "scale_rewards": args.scale_rewards, "learning_rate": args.learning_rate, "threads": args.threads,
                "seed": args.seed, "trl_defaults": args.trl_defaults,
                "latentrl_compile": args.latentrl_compile, "compile_update": args.compile_update,
                "bf16": args.bf16, "allocator": args.allocator}  # fmt: skip
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        pairs = [run_pair(k, args.pairs, spec_path, args.allocator) for k in range(args.pairs)]
    setup = {**spec, "checkpoint": args.checkpoint or TINY, "rollouts": args.prompts * args.generations,
             "pairs": args.pairs, "task": "arith", "temperature": 1.0, "top_p": 1.0, "top_k": "off (TRL top_k=0)",
             "beta": 0.0, "num_iterations": 1, "epsilon": 0.2, "optimizer": "torch.optim.AdamW, weight decay 0",
             "reward": "latentrl.rewards:answer_match"}  # fmt: skip
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
           "cpu_count": os.cpu_count(), "torch_threads": sorted({p[s]["torch_threads"] for p in pairs for s in SIDES}),
           "platform": platform.platform(), "loadavg_before": load_before,
           "loadavg_after": os.getloadavg()}  # fmt: skip
    result = {"benchmark": "trl_grpo_step",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "env": env, "setup": setup, "summary": summarise(pairs), "pairs": pairs}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print_table(setup, result["summary"], args.out)


if __name__ == "__main__":
    main()
