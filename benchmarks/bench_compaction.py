"""Finished rows leaving the decoding batch: ``generate`` with ``compact_at=0`` (every row stays to the
end) against the default ``compact_at=0.25``, same inputs, same draws.

    python benchmarks/bench_compaction.py [--out benchmarks/results/compaction.json] [--rounds 5]
        [--smollm2-dir /tmp/latentrl_smollm2] [--skip-smollm2] [--threads N]

Rollouts end where the model emits EOS, as in training: the tiny GPT-2 (4 x 128) CoT-SFT'd by
``latentrl sft mode=cot`` on 2,000 arith problems (64 rollouts = 8 prompts x 8, at most 32 tokens, the
settings of ``bench_trl_grpo.py``), and SmolLM2-135M-Instruct asked "What is <problem>?" through its chat
template (16 rollouts = 4 x 4, at most 96 tokens; without the template it rarely stops within 128). Sampling at T = 1 with the same generator seed on both sides, so the two produce the
same tokens (the script checks it). Runs alternate (kept, compacted, ...) after one warm-up of each;
the ratio is the median over rounds of compacted / kept seconds (< 1: compaction is faster). The
result also records the completion lengths, which bound the saving: the row-steps a batch that keeps
every row runs are ``B x max length``, those of rows still decoding ``sum of lengths``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_soft import load_model, med, model_bench_args, start_result, write_result  # noqa: E402
from bench_trl_grpo import build_checkpoint  # noqa: E402

from latentrl.models import encode_prompt, generate, load_checkpoint  # noqa: E402
from latentrl.tasks import load_examples  # noqa: E402



def tiny_cot(folder: Path):
    """The tiny CoT checkpoint of ``bench_trl_grpo.py`` (its ``build_checkpoint``, about 15 s on 2 cores)."""
    return load_checkpoint(build_checkpoint(folder))


def chat_prompts(tok, questions: list[str]) -> list[list[int]]:
    """``What is <question>?`` as a user turn of the model's chat template, ready for the assistant's answer."""
    return [list(tok.apply_chat_template([{"role": "user", "content": f"What is {q}?"}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True)["input_ids"]) for q in questions]  # fmt: skip


def case(name: str, model, tok, thinking, n_prompts: int, G: int, T: int, rounds: int, desc: str, chat: bool) -> dict:
    questions = [e.question for e in load_examples("arith", "test", n_prompts, seed=0)]
    prompts = chat_prompts(tok, questions) if chat else [encode_prompt(tok, q, thinking) for q in questions]
    decode = dict(latent_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  num_generations=G, max_new_tokens=T, temperature=1.0)  # fmt: skip

    def run(compact_at: float):
        return generate(model, prompts, compact_at=compact_at, generator=torch.Generator().manual_seed(0), **decode)

    kept, compacted = run(0.0), run(0.25)
    assert torch.equal(kept.completion_ids, compacted.completion_ids), "compaction changed the tokens"
    lengths = kept.completion_mask.sum(1)
    times = {"kept": [], "compacted": []}
    for _ in range(rounds):
        for key, compact_at in (("kept", 0.0), ("compacted", 0.25)):
            t = time.perf_counter()
            run(compact_at)
            times[key].append(time.perf_counter() - t)
    B = n_prompts * G
    result = {
        "model": desc, "rollouts": B, "max_new_tokens": T, "seconds": times,
        "mean_length": lengths.float().mean().item(), "max_length": int(lengths.max()),
        "row_steps_kept": B * int(lengths.max()), "row_steps_decoding": int(lengths.sum()),
        "compacted_over_kept": med([c / k for c, k in zip(times["compacted"], times["kept"])]),
    }  # fmt: skip
    print(f"{name}: kept {med(times['kept']):.3f} s, compacted {med(times['compacted']):.3f} s, ratio "
          f"{result['compacted_over_kept']:.2f} (lengths mean {result['mean_length']:.1f}, max {result['max_length']}; "
          f"row-steps {result['row_steps_decoding']} of {result['row_steps_kept']})")  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = model_bench_args(__doc__.splitlines()[0], "benchmarks/results/compaction.json")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    result = start_result("compaction", args.threads) | {"cases": {}}
    with tempfile.TemporaryDirectory(prefix="bench_compaction_") as tmp, torch.no_grad():
        model, tok, thinking = tiny_cot(Path(tmp))
        result["cases"]["tiny"] = case("tiny", model.eval(), tok, thinking, 8, 8, 32, args.rounds,
                                       "tiny gpt2 4x128, latentrl sft mode=cot, 2000 arith examples, 1 epoch", chat=False)  # fmt: skip
    if not args.skip_smollm2:
        model, tok, thinking, desc = load_model("smollm2", args.smollm2_dir)
        result["cases"]["smollm2"] = case("smollm2", model, tok, thinking, 4, 4, 96, args.rounds, desc, chat=True)
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
