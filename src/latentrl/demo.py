"""``latentrl demo``: the whole path on a laptop CPU, offline.

1. build a tiny GPT-2 and train chain of thought (CoT) on the default ``arith`` task
2. continue with the Coconut curriculum from the CoT checkpoint (stages 1 .. max) -> ``sft/``
3. train a no-CoT model on the same number of examples as CoT + Coconut together
4. Dropout-GRPO from the Coconut checkpoint on training prompts -> ``grpo/``
5. evaluate every model on held-out test problems (greedy accuracy, pass@k, maj@k, tokens used)
6. write ``report.md``, ``report.json`` and the plots
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from pydantic import Field, model_validator

from latentrl import allocator
from latentrl.config import Config, config_to_dict, save_config, validate_config
from latentrl.eval.evaluate import EvalConfig, evaluate, write_eval
from latentrl.models import load_checkpoint
from latentrl.tasks import load_examples
from latentrl.train.grpo import GRPOConfig, train_grpo
from latentrl.train.sft import SFTConfig, train_sft


class DemoConfig(Config):
    """Config of ``latentrl demo`` (``configs/demo.yaml`` holds the same values)."""

    out: str = Field("runs/demo", min_length=1, description="Output directory.")
    seed: int = Field(0, description="Seed of the model, data, training and evaluation.")
    task: str = Field("arith", description="Synthetic task.")
    task_kwargs: dict[str, int | float | str] = Field({}, description="Task knobs.")
    num_train_examples: int = Field(10000, ge=1, description="Training problems.")
    cot_epochs: int = Field(3, ge=1, description="Epochs of CoT training.")
    coconut_epochs: int = Field(8, ge=1, description="Epochs of the Coconut curriculum (from stage 1).")
    max_latent_stage: int = Field(2, ge=1, description="Last Coconut stage (steps replaced by thoughts).")
    c_thought: int = Field(2, ge=1, description="Thoughts per replaced step.")
    epochs_per_stage: int = Field(1, ge=1, description="Coconut epochs per stage.")
    final_stage: int | None = Field(2, ge=1, description="Stage the curriculum stays at once reached.")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW learning rate of SFT.")
    per_device_train_batch_size: int = Field(64, ge=1, description="SFT batch size.")
    n_layer: int = Field(4, ge=1, description="Tiny model layers.")
    n_embd: int = Field(128, ge=1, description="Tiny model width.")
    grpo_steps: int = Field(100, ge=0, description="Dropout-GRPO steps (0 skips RL).")
    grpo: dict = Field({}, description="GRPOConfig overrides of the RL step (checked when the demo starts).")
    eval_n: int = Field(500, ge=1, description="Test problems evaluated.")
    eval_samples: int = Field(8, ge=1, description="Samples per test problem for pass@k / maj@k.")
    disable_tqdm: bool = Field(False, description="No progress bars.")

    @model_validator(mode="after")
    def _runs_are_valid(self):
        """Every run the demo will start, checked now (a typo in ``grpo`` fails here, not after SFT)."""
        for mode, epochs in (("cot", self.cot_epochs), ("coconut", self.coconut_epochs)):
            sft_config(self, mode, epochs)
        if self.grpo_steps:
            grpo_config(self, Path(self.out, "sft"))
        return self


def sft_config(cfg: DemoConfig, mode: str, epochs: int, **extra) -> SFTConfig:
    return validate_config(SFTConfig, dict(
        output_dir=str(Path(cfg.out, "runs", mode)), mode=mode, task=cfg.task, task_kwargs=dict(cfg.task_kwargs),
        num_train_examples=cfg.num_train_examples, num_train_epochs=epochs, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_train_batch_size, n_layer=cfg.n_layer, n_embd=cfg.n_embd,
        c_thought=cfg.c_thought, max_latent_stage=cfg.max_latent_stage, epochs_per_stage=cfg.epochs_per_stage,
        final_stage=cfg.final_stage,
        seed=cfg.seed, save_steps=0, disable_tqdm=cfg.disable_tqdm, **extra,
    ), where=f"the demo's {mode} run")  # fmt: skip


def evaluate_checkpoint(path, cfg: DemoConfig, name: str, examples) -> dict:
    model, tokenizer, thinking = load_checkpoint(path)
    ecfg = EvalConfig(checkpoint=str(path), task=cfg.task, n=cfg.eval_n, samples=cfg.eval_samples, seed=cfg.seed,
                      task_kwargs=dict(cfg.task_kwargs), out=str(Path(cfg.out, "eval", name)))  # fmt: skip
    result = evaluate(model, tokenizer, thinking, examples, ecfg)
    write_eval(result, ecfg.out)
    return result.metrics


def grpo_config(cfg: DemoConfig, sft: Path) -> GRPOConfig:
    fields = dict(output_dir=str(Path(cfg.out, "runs", "grpo")), model_name_or_path=str(sft), task=cfg.task,
                  task_kwargs=dict(cfg.task_kwargs), max_steps=cfg.grpo_steps, seed=cfg.seed, save_steps=0,
                  generation_batch_size=256, per_device_train_batch_size=128, learning_rate=2e-4,
                  exploration="dropout", dropout_p=0.1, dropout_scope="rollout", dropout_sites=["thought"],
                  eval_steps=max(1, cfg.grpo_steps // 5), eval_n=200, disable_tqdm=cfg.disable_tqdm)  # fmt: skip
    return validate_config(GRPOConfig, {**fields, **cfg.grpo}, where="the demo's grpo block")


def publish(checkpoint: Path, dest: Path) -> None:
    """Copy a final checkpoint to a stable place (``sft/``, ``grpo/``), replacing an older copy."""
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns("trainer_state.json", "optimizer.pt", "manifest.json"))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def plot_demo(out: Path) -> list[Path]:
    """``sft_loss.png`` (every SFT run) and ``grpo.png`` (reward and validation accuracy over RL steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from latentrl.train.common import read_log

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in ("cot", "coconut", "nocot"):
        log = [r for r in read_log(out / "runs" / mode / "log.jsonl") if "loss" in r]  # not eval / stop records
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], label=mode)
    ax.set(xlabel="optimizer step", ylabel="SFT loss", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "sft_loss.png", dpi=120)
    plt.close(fig)
    written.append(out / "sft_loss.png")
    log = read_log(out / "runs" / "grpo" / "log.jsonl")
    if log:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        a1.plot([r["step"] for r in log if "reward" in r], [r["reward"] for r in log if "reward" in r])
        a1.set(xlabel="RL step", ylabel="mean reward (training prompts)")
        a2.plot([r["step"] for r in log if "eval/accuracy" in r], [r["eval/accuracy"] for r in log if "eval/accuracy" in r], marker="o")
        a2.set(xlabel="RL step", ylabel="greedy accuracy (200 validation problems)")
        fig.tight_layout()
        fig.savefig(out / "grpo.png", dpi=120)
        plt.close(fig)
        written.append(out / "grpo.png")
    return written


def render_table(rows: dict[str, dict], samples: int) -> str:
    """A markdown table of the demo's models."""
    k = samples
    head = f"| model | greedy accuracy | pass@{k} | maj@{k} | tokens used (thoughts + text) | train time (s) |"
    lines = [head, "|---|---|---|---|---|---|"]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m['accuracy']:.3f} | {m.get(f'pass@{k}', float('nan')):.3f} | "
            f"{m.get(f'maj@{k}', float('nan')):.3f} | {m['mean_tokens']:.1f} "
            f"({m['mean_latent_tokens']:.1f} + {m['mean_completion_tokens']:.1f}) | {m['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def versions() -> dict[str, str]:
    """The versions the figures were made with (``report.json``), and the CPU: its kernels' rounding differs
    between instruction sets (torch's ``cpu_capability``: AVX2, AVX512, ...), which over a training run
    grows into other models, so the figures are exact for one kind of CPU."""
    import platform
    from importlib.metadata import version

    packages = ("latentrl", "torch", "transformers", "accelerate", "tokenizers", "numpy", "pydantic")
    return {"python": platform.python_version(), **{p: version(p) for p in packages}, "threads": str(torch.get_num_threads()),
            "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "allocator": allocator.current()}  # fmt: skip


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_demo(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - t
        return result

    # 1-3. CoT, Coconut from CoT, no-CoT on the same number of training examples
    cot = timed("cot", lambda: train_sft(sft_config(cfg, "cot", cfg.cot_epochs)))
    coconut = timed("coconut", lambda: train_sft(
        sft_config(cfg, "coconut", cfg.coconut_epochs, model_name_or_path=str(cot), start_stage=1)))  # fmt: skip
    nocot = timed("nocot", lambda: train_sft(sft_config(cfg, "nocot", cfg.cot_epochs + cfg.coconut_epochs)))
    publish(coconut, out / "sft")
    # 4. Dropout-GRPO from the Coconut checkpoint
    grpo = None
    if cfg.grpo_steps > 0:
        grpo = timed("grpo", lambda: train_grpo(grpo_config(cfg, out / "sft")))
        publish(grpo, out / "grpo")
    # 5. evaluation on held-out problems
    examples = load_examples(cfg.task, "test", cfg.eval_n, cfg.seed, **cfg.task_kwargs)
    sft_time = timings["cot"] + timings["coconut"]
    models = [("no-CoT", "nocot", nocot, timings["nocot"]), ("CoT", "cot", cot, timings["cot"]),
              ("Coconut", "coconut", coconut, sft_time)]  # fmt: skip
    if grpo is not None:
        models.append(("Coconut + Dropout-GRPO", "grpo", grpo, sft_time + timings["grpo"]))
    rows = {name: {**evaluate_checkpoint(path, cfg, slug, examples), "train_seconds": seconds}
            for name, slug, path, seconds in models}  # fmt: skip
    # 6. report and plots
    table = render_table(rows, cfg.eval_samples)
    plots = plot_demo(out)
    wall = time.perf_counter() - t_start
    report = {"config": config_to_dict(cfg), "results": rows, "timings_seconds": timings, "wall_seconds": wall,
              "versions": versions()}  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(
        f"# latentrl demo\n\nTask `{cfg.task}` {cfg.task_kwargs or '(default knobs)'}, {cfg.eval_n} held-out test "
        f"problems, seed {cfg.seed}. No-CoT is trained on as many examples as CoT + Coconut together.\n\n"
        f"{table}\n\nWall time: {wall:.0f} s.\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in plots)
    )
    print(table)
    print(f"\nwall time {wall:.0f} s; report in {out / 'report.md'}")
    return report
