"""``latentrl sweep``: methods x seeds from SFT checkpoints, with a table and plots.

1. for each seed: the SFT baseline — given (``sft_checkpoints``) or trained here with the seed
   (``sft``: SFTConfig fields, e.g. early stopping on validation accuracy) — and its test accuracy
2. for each GRPO method: train from the seed's SFT checkpoint, evaluate greedy test accuracy
3. ``sft_more``: more SFT from the same checkpoint for as long as ``dropout_grpo`` trained
4. write ``results.json``, ``table.md`` (mean +- std, 95% CI, paired difference to ``sft``), plots

Where the training problems come from (``data``):

- ``sft``: RL and ``sft_more`` use the SFT run's own problems and nothing else (one data budget);
- ``fresh_prompts``: RL draws new prompts (question and gold answer: the reward never reads the
  worked steps) while ``sft_more`` keeps to the SFT run's demonstrations. This is the usual setting
  of RL post-training, where worked solutions are scarce and verifiable questions are not;
- ``fresh``: RL draws its own prompt pool (``grpo.data_seed``) and ``sft_more`` fresh problems.

Finished runs (``result.json`` present) are skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from latentrl.config import Config, save_config, validate_config
from latentrl.experiments.methods import ALL_METHODS, DEFAULT_METHODS, GRPO_METHODS, METHODS
from latentrl.experiments.report import plot_curves, summarize, write_table



class SweepConfig(Config):
    """Config of ``latentrl sweep``."""

    out: str = Field("runs/sweep", min_length=1, description="Output directory.")
    sft_checkpoints: list[str] = Field([], description="SFT checkpoint per seed (or one shared by every seed).")
    sft: list[dict] = Field(
        [], description="Train each seed's SFT baseline here: SFTConfig fields of each run in order (e.g. CoT, then "
                        "Coconut), each starting from the previous one's final/; seed = the sweep seed.",
    )  # fmt: skip
    data: Literal["sft", "fresh_prompts", "fresh"] = Field(
        "fresh", description="sft: RL and sft_more train on the SFT run's problems; fresh_prompts: RL gets new prompts, "
                             "sft_more the SFT run's problems; fresh: both get new problems.",
    )  # fmt: skip
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="RL seeds.")
    methods: list[Literal[ALL_METHODS]] = Field(list(DEFAULT_METHODS), min_length=1, description="Methods compared (default: all but the bupo_* arms).")  # type: ignore[valid-type]
    grpo: dict = Field({}, description="GRPOConfig overrides shared by the GRPO methods.")
    bupo: dict = Field(
        {}, description="GRPOConfig keys the bupo_* methods add to their control's run: bupo_layer, bupo_steps "
                        "(required), bupo_module, bupo_final_norm.",
    )  # fmt: skip
    sft_more: dict = Field({}, description="SFTConfig overrides of the sft_more control.")
    task: str = Field("arith", description="Task (train prompts for RL, test problems for eval).")
    task_kwargs: dict[str, int | float | str] = Field({}, description="Task knobs.")
    eval_n: int = Field(500, ge=1, description="Held-out test problems per evaluation.")
    eval_samples: int = Field(
        1, ge=1, description="Sampled completions per test problem besides the greedy one (pass@k, maj@k for k <= it)."
    )
    eval_temperature: float = Field(1.0, ge=0, description="Temperature of the sampled completions.")
    baseline: str = Field("sft", description="The method every other is compared with (paired differences).")
    disable_tqdm: bool = Field(True, description="No progress bars.")

    @model_validator(mode="after")
    def _consistent(self):
        if bool(self.sft_checkpoints) == bool(self.sft):
            raise ValueError("give either sft_checkpoints (one per seed, or one for all) or sft (SFTConfig fields "
                             "of a baseline trained per seed), not both or neither")  # fmt: skip
        if self.sft_checkpoints and len(self.sft_checkpoints) not in (1, len(self.seeds)):
            raise ValueError(f"{len(self.sft_checkpoints)} sft_checkpoints for {len(self.seeds)} seeds")
        if self.sft and self.data != "fresh":
            check_one_data_budget(self.sft)
        if "sft_more" in self.methods and "dropout_grpo" not in self.methods:
            raise ValueError("sft_more takes its time budget from dropout_grpo: include both")
        needed = {m: METHODS[m].model_of for m in self.methods if METHODS[m].model_of and METHODS[m].model_of not in self.methods}
        if needed:
            raise ValueError(f"{', '.join(needed)} evaluate the model of {', '.join(set(needed.values()))}: include it")
        bupo = [m for m in self.methods if METHODS[m].bupo]
        if bupo and not (self.bupo.get("bupo_layer") and self.bupo.get("bupo_steps")):
            raise ValueError(f"{', '.join(bupo)} need the sweep's bupo block with bupo_layer and bupo_steps > 0")
        if self.bupo and not bupo:
            raise ValueError("the sweep's bupo block is set but no bupo_* method is among the methods")
        if set(self.bupo) - {"bupo_layer", "bupo_steps", "bupo_module", "bupo_final_norm"}:
            raise ValueError(f"the sweep's bupo block takes bupo_* keys only, got {sorted(self.bupo)}")
        missing = {METHODS[m].control for m in bupo} - set(self.methods)
        if missing:
            raise ValueError(f"{', '.join(bupo)} are paired with their controls: include {', '.join(sorted(missing))}")
        if self.baseline not in self.methods:
            raise ValueError(f"baseline {self.baseline!r} is not among the methods {self.methods}")
        self.check_blocks()
        return self

    def check_blocks(self) -> None:
        """Every run's config, validated before any training (a typo in ``grpo:`` fails here, not
        after the SFT baselines trained)."""
        from latentrl.train.grpo_config import GRPOConfig
        from latentrl.train.sft_config import SFTConfig

        base = {"task": self.task, "task_kwargs": dict(self.task_kwargs)}
        for i, run in enumerate(self.sft):
            validate_config(SFTConfig, {**base, **run}, where=f"the sweep's sft run {i}")
        for method in (m for m in self.methods if m in GRPO_METHODS):
            validate_config(GRPOConfig, {**base, **self.grpo_keys(method), "model_name_or_path": "sft"},
                            where=f"the sweep's grpo block, method {method}")  # fmt: skip
        if "sft_more" in self.methods:
            layout = {"mode": "cot", "num_train_epochs": 10**6, "save_steps": 0}  # the checkpoint's own layout at run time
            validate_config(SFTConfig, {**base, **layout, **self.sft_more, "max_time_seconds": 1.0},
                            where="the sweep's sft_more block")  # fmt: skip

    def grpo_keys(self, method: str) -> dict:
        """The GRPOConfig overrides of ``method``'s RL run: the shared block, the method's own, BuPO's."""
        return {**self.grpo, **GRPO_METHODS[method], **(self.bupo if METHODS[method].bupo else {})}

    def checkpoint_of(self, i: int) -> str:
        return self.sft_checkpoints[i if len(self.sft_checkpoints) > 1 else 0]


def check_one_data_budget(runs: list[dict]) -> None:
    """The runs of an SFT chain must train on the same problems: with ``data`` sft or fresh_prompts the
    last run's problems stand for the whole baseline's data budget."""
    from latentrl.train.sft_config import SFTConfig

    defaults = {name: f.default for name, f in SFTConfig.model_fields.items()}
    for key in ("num_train_examples", "data_seed", "data_path", "task", "task_kwargs"):
        values = {repr(run.get(key, defaults.get(key))) for run in runs}
        if len(values) > 1:
            raise ValueError(f"the sft runs differ in {key} ({', '.join(sorted(values))}): with data=sft or "
                             "fresh_prompts every run of the chain must train on the same problems")  # fmt: skip


def sft_data_of(checkpoint: str) -> dict:
    """The training problems of the SFT run that wrote ``checkpoint`` (from its ``config.yaml``)."""
    from latentrl.config import load_config
    from latentrl.train.sft import SFTConfig

    folder = Path(checkpoint).parent
    path = folder / "config.yaml"
    if (folder / "run.json").exists():  # the config in force last (a resume may have changed it)
        path = folder / json.loads((folder / "run.json").read_text())["configs"][-1]
    if not path.exists():
        raise ValueError(f"data=sft needs the SFT run's config next to its checkpoint: {path} not found")
    run = load_config(SFTConfig, path)
    data = {k: getattr(run, k) for k in ("task", "task_kwargs", "num_train_examples", "data_path")}
    return data | {"data_seed": run.seed if run.data_seed is None else run.data_seed}


def train_sft_baseline(seed: int, cfg: SweepConfig) -> list[str]:
    """The seed's SFT chain: the runs of ``cfg.sft`` in order, each from the previous one's ``final/``;
    returns every run's ``final/`` (the first is e.g. CoT, the last the baseline). The chain resumes
    after its last run whose ``final/`` exists (trained by an earlier sweep, or copied from another
    machine): that run and those before it are not trained again."""
    from latentrl.train.sft import SFTConfig, train_sft

    run_dirs = [Path(cfg.out, "sft", f"seed{seed}", f"run{i}") for i in range(len(cfg.sft))]
    done = [i for i, d in enumerate(run_dirs) if (d / "final" / "latentrl.json").exists()]
    first = done[-1] + 1 if done else 0
    finals = [str(d / "final") for d in run_dirs[:first]]
    start = None
    if done:
        start = str(run_dirs[done[-1]] / "final")
        print(f"[sweep] seed {seed}: reusing {start} (delete it to train again)", flush=True)
    for run, run_dir in zip(cfg.sft[first:], run_dirs[first:]):
        fields = {"task": cfg.task, "task_kwargs": dict(cfg.task_kwargs), "disable_tqdm": cfg.disable_tqdm, **run,
                  "seed": seed, "output_dir": str(run_dir)}  # fmt: skip
        if start is not None:
            fields["model_name_or_path"] = start
        start = str(train_sft(validate_config(SFTConfig, fields, where=f"the sweep's sft run of seed {seed}")))
        finals.append(start)
    return finals


def test_metrics(checkpoint, cfg: SweepConfig, out: Path, keys: dict) -> dict:
    """Greedy accuracy (and with ``eval_samples > 1`` pass@k, maj@k) on the test split."""
    from latentrl.eval.evaluate import EvalConfig, run_eval

    fields = {"checkpoint": str(checkpoint), "task": cfg.task, "n": cfg.eval_n, "seed": 0, "samples": cfg.eval_samples,
              "temperature": cfg.eval_temperature, "task_kwargs": dict(cfg.task_kwargs), "out": str(out),
              "progress": not cfg.disable_tqdm, **keys}  # fmt: skip
    return run_eval(validate_config(EvalConfig, fields, where="the sweep's evaluation")).metrics


def run_grpo_method(method: str, seed: int, sft: str, cfg: SweepConfig, run_dir: Path) -> Path:
    from latentrl.train.grpo import GRPOConfig, train_grpo

    fields = {"task": cfg.task, "task_kwargs": dict(cfg.task_kwargs), "disable_tqdm": cfg.disable_tqdm,
              **cfg.grpo_keys(method), "seed": seed, "model_name_or_path": sft, "output_dir": str(run_dir)}  # fmt: skip
    if cfg.data == "sft":  # the prompts are the SFT run's training problems
        data = sft_data_of(sft)
        fields.update(task=data["task"], task_kwargs=data["task_kwargs"], data_path=data["data_path"],
                      num_train_examples=data["num_train_examples"], data_seed=data["data_seed"])  # fmt: skip
    elif cfg.data == "fresh_prompts":  # the SFT run's task, prompts drawn with a seed of their own
        data = sft_data_of(sft)
        fields.update(task=data["task"], task_kwargs=data["task_kwargs"])
        fields.setdefault("data_seed", 1000 + data["data_seed"])
    return train_grpo(validate_config(GRPOConfig, fields, where=f"the sweep's {method} run"))


def run_sft_more(seed: int, sft: str, seconds: float, cfg: SweepConfig, run_dir: Path) -> Path:
    """More SFT at the checkpoint's own curriculum stage, for ``seconds`` of training."""
    from latentrl.models.layout import ThinkingConfig
    from latentrl.train.sft import SFTConfig, train_sft

    thinking = ThinkingConfig.load(sft)
    coconut = thinking.thinking_mode == "coconut"
    if coconut and thinking.curriculum_stage is None:
        raise ValueError(f"{sft}/latentrl.json has no curriculum_stage: cannot continue its curriculum")
    layout = {"mode": "coconut", "c_thought": thinking.thoughts_per_step, "start_stage": thinking.curriculum_stage,
              "final_stage": thinking.curriculum_stage, "max_latent_stage": thinking.max_latent_stage} if coconut else {"mode": "cot"}  # fmt: skip
    fields = {"task": cfg.task, "task_kwargs": dict(cfg.task_kwargs), "disable_tqdm": cfg.disable_tqdm, **layout,
              "num_train_epochs": 10**6, "save_steps": 0, **cfg.sft_more,
              "max_time_seconds": seconds, "seed": 1000 + seed, "model_name_or_path": sft, "output_dir": str(run_dir)}  # fmt: skip
    if cfg.data in ("sft", "fresh_prompts"):  # more epochs over the SFT run's own problems, in a new order
        fields.update(sft_data_of(sft))
    return train_sft(validate_config(SFTConfig, fields, where="the sweep's sft_more run"))


def run_one(method: str, seed: int, chain: list[str], cfg: SweepConfig, results: dict) -> dict:
    """Train (or pick) the method's model for ``seed``, evaluate it, and record ``result.json``."""
    spec = METHODS[method]
    run_dir = Path(cfg.out, method, f"seed{seed}")
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    sft = chain[0] if spec.base == "first" else chain[-1]
    t = time.perf_counter()
    if spec.model_of is not None:
        checkpoint = results[(spec.model_of, seed)]["checkpoint"]
    elif method == "sft_more":
        checkpoint = run_sft_more(seed, sft, results[("dropout_grpo", seed)]["train_seconds"], cfg, run_dir)
    elif spec.grpo is not None:
        checkpoint = run_grpo_method(method, seed, sft, cfg, run_dir)
    else:
        checkpoint = sft
    trained = spec.grpo is not None or method == "sft_more"
    train_seconds = time.perf_counter() - t if trained else 0.0
    metrics = test_metrics(checkpoint, cfg, run_dir / "eval", spec.eval_keys)
    result = {"method": method, "seed": seed, "accuracy": metrics["accuracy"], "train_seconds": train_seconds,
              "mean_tokens": metrics["mean_tokens"], "checkpoint": str(checkpoint),
              **{k: v for k, v in metrics.items() if k.startswith(("pass@", "maj@")) or k in SAMPLED_KEYS}}  # fmt: skip
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


SAMPLED_KEYS = ("mean_sample_accuracy", "mean_thinking_steps", "mean_answer_tokens", "tokens_per_solved",
                "sampled_tokens_per_solved")


def run_sweep(cfg: SweepConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    last = [m for m in cfg.methods if m == "sft_more" or METHODS[m].model_of]  # they need another method's result
    order = [m for m in ALL_METHODS if m in cfg.methods and m not in last] + [m for m in ALL_METHODS if m in last]
    results: dict[tuple[str, int], dict] = {}
    for i, seed in enumerate(cfg.seeds):
        chain = [cfg.checkpoint_of(i)] if cfg.sft_checkpoints else train_sft_baseline(seed, cfg)
        for method in order:
            results[(method, seed)] = run_one(method, seed, chain, cfg, results)
            print(f"[sweep] {method} seed {seed}: accuracy {results[(method, seed)]['accuracy']:.3f}", flush=True)
    controls = {m: METHODS[m].control for m in order if METHODS[m].control}
    summary = summarize(results, cfg.seeds, order, cfg.baseline, controls)
    (out / "results.json").write_text(json.dumps({"runs": list(results.values()), "summary": summary}, indent=2) + "\n")
    write_table(summary, out / "table.md", cfg)
    plot_curves(out, order, cfg.seeds)
    print((out / "table.md").read_text())
    return summary
