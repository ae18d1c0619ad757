"""Statistics over seeds, the markdown table and the PNG plots of a sweep."""

from __future__ import annotations

import json
from pathlib import Path

from latentrl.eval.metrics import mean_ci, paired_difference
from latentrl.train.common import read_log


def summarize(results: dict, seeds: list[int], methods: list[str], baseline: str = "sft",
              controls: dict[str, str] | None = None) -> dict:  # fmt: skip
    """Per method: greedy accuracies by seed, mean, std, 95% CI and the paired difference to ``baseline``
    (``paired_diff_vs_sft`` when it is ``sft``); the same mean, CI and paired difference for every
    sampled metric the runs report (pass@k, maj@k, mean_sample_accuracy); the mean tokens per solved
    problem; and for a method in ``controls`` (method -> its control) every paired difference to that control."""
    import statistics

    summary = {}
    for m in methods:
        acc = [results[(m, s)]["accuracy"] for s in seeds]
        est = mean_ci(acc)
        row = {"accuracy_by_seed": acc, "mean": est.mean, "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
               "ci95": [est.lo, est.hi], "train_seconds": sum(results[(m, s)]["train_seconds"] for s in seeds) / len(seeds)}  # fmt: skip
        if m != baseline and baseline in methods:
            diff = paired_difference(acc, [results[(baseline, s)]["accuracy"] for s in seeds])
            row[f"paired_diff_vs_{baseline}"] = {"mean": diff.mean, "ci95": [diff.lo, diff.hi]}
        row["sampled"] = sampled_summary(results, seeds, m, baseline if baseline in methods and m != baseline else None)
        row["tokens_per_solved"] = mean_of_known([results[(m, s)].get("tokens_per_solved") for s in seeds])
        control = (controls or {}).get(m)
        if control in methods:
            diff = paired_difference(acc, [results[(control, s)]["accuracy"] for s in seeds])
            row["vs_control"] = {"control": control, "accuracy": {"mean": diff.mean, "ci95": [diff.lo, diff.hi]},
                                 "sampled": sampled_summary(results, seeds, m, control)}  # fmt: skip
        summary[m] = row
    return summary


def sampled_summary(results: dict, seeds: list[int], method: str, baseline: str | None) -> dict:
    """Mean and CI of each sampled metric over seeds, with its paired difference to ``baseline``."""
    keys = [k for k in results[(method, seeds[0])] if k.startswith(("pass@", "maj@")) or k == "mean_sample_accuracy"]
    out = {}
    for k in keys:
        values = [results[(method, s)][k] for s in seeds]
        est = mean_ci(values)
        out[k] = {"mean": est.mean, "ci95": [est.lo, est.hi]}
        if baseline is not None and k in results[(baseline, seeds[0])]:
            diff = paired_difference(values, [results[(baseline, s)][k] for s in seeds])
            out[k]["paired_diff"] = {"mean": diff.mean, "ci95": [diff.lo, diff.hi]}
    return out


def mean_of_known(values: list[float | None]) -> float | None:
    """The mean of the values that are not None (None if none is)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.1f}"


def write_table(summary: dict, path: Path, cfg) -> None:
    base = getattr(cfg, "baseline", "sft")
    lines = [f"Greedy accuracy (%) on {cfg.eval_n} held-out test problems, seeds {cfg.seeds}.", "",
             f"| method | mean ± std | 95% CI | Δ vs {base} (paired) | 95% CI of Δ | tokens / solved | train s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for m, r in summary.items():
        d = r.get(f"paired_diff_vs_{base}")
        delta = (f"{100 * d['mean']:+.1f}", f"[{_pct(d['ci95'][0])}, {_pct(d['ci95'][1])}]") if d else ("", "")
        lines.append(f"| {m} | {_pct(r['mean'])} ± {_pct(r['std'])} | [{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}] | "
                     f"{delta[0]} | {delta[1]} | {_count(r.get('tokens_per_solved'))} | {r['train_seconds']:.0f} |")  # fmt: skip
    lines += sampled_table(summary, base)
    lines += control_table(summary)
    trained = baseline_training(Path(cfg.out), cfg.seeds)
    if trained:
        lines += ["", "SFT baselines trained by the sweep (greedy accuracy on validation problems):", *trained]
    path.write_text("\n".join(lines) + "\n")


def sampled_table(summary: dict, base: str) -> list[str]:
    """A second table when the runs were evaluated with samples: each metric's mean and paired Δ vs ``base``."""
    keys = list(dict.fromkeys(k for r in summary.values() for k in r.get("sampled", {})))
    if not keys:
        return []
    lines = ["", f"Sampled metrics (%): mean [95% CI]; Δ vs {base} paired, with its 95% CI.", "",
             "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]  # fmt: skip
    for m, r in summary.items():
        cells = []
        for k in keys:
            v = r.get("sampled", {}).get(k)
            if v is None:
                cells.append("")
                continue
            cell = f"{_pct(v['mean'])} [{_pct(v['ci95'][0])}, {_pct(v['ci95'][1])}]"
            if "paired_diff" in v:
                cell += f"; Δ {_delta(v['paired_diff'])}"
            cells.append(cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _count(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _delta(d: dict) -> str:
    return f"{100 * d['mean']:+.1f} [{_pct(d['ci95'][0])}, {_pct(d['ci95'][1])}]"


def control_table(summary: dict) -> list[str]:
    """Each method against its own control (e.g. BuPO against the same GRPO without phase 1), paired by seed."""
    rows = {m: r["vs_control"] for m, r in summary.items() if "vs_control" in r}
    if not rows:
        return []
    keys = list(dict.fromkeys(k for v in rows.values() for k in v["sampled"] if "paired_diff" in v["sampled"][k]))
    lines = ["", "Each method against its control (Δ in points, paired by seed, with its 95% CI).", "",
             "| method | control | Δ greedy | " + " | ".join(f"Δ {k}" for k in keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]  # fmt: skip
    for m, v in rows.items():
        cells = [_delta(v["sampled"][k]["paired_diff"]) if "paired_diff" in v["sampled"].get(k, {}) else "" for k in keys]
        lines.append(f"| {m} | {v['control']} | {_delta(v['accuracy'])} | " + " | ".join(cells) + " |")
    return lines


def baseline_training(out: Path, seeds: list[int]) -> list[str]:
    """One line per SFT run that the sweep trained: epochs run, why it stopped, its best validation epoch."""
    from latentrl.models.checkpoint import load_trainer_state

    lines = []
    for s in seeds:
        for run in sorted(Path(out, "sft", f"seed{s}").glob("run*")):
            if not (run / "final").is_dir():
                continue
            state = load_trainer_state(run / "final")
            evals = [r for r in read_log(run / "log.jsonl") if "eval/accuracy" in r]
            if state is None:  # final/ copied without its trainer state: what the log says
                last_stage = max((r.get("stage", 0) for r in evals), default=0)
                at_last = [r for r in evals if r.get("stage", 0) == last_stage]
                top = max(at_last, key=lambda r: r["eval/accuracy"], default=None)
                state = {"epoch": evals[-1]["epoch"] if evals else "?", "stopped": "unrecorded",
                         "best": top and {"accuracy": top["eval/accuracy"], "epoch": top["epoch"]}}  # fmt: skip
            best = state.get("best") or {}
            epochs, stopped = state["epoch"], state.get("stopped")
            if stopped is None:  # written before runs recorded why they stopped: read it off the log
                epochs = evals[-1]["epoch"] if evals else epochs
                stopped = "epochs" if epochs >= state["epoch"] else "plateau"
            why = {"plateau": "early stopping", "epochs": "the epoch cap", "budget": "the step/time budget",
                   "unrecorded": "an unrecorded reason (no trainer state in final/)"}  # fmt: skip
            line = f"- seed {s}, {run.name}: {epochs} epochs, ended by {why.get(stopped, '?')}"
            if best:
                line += f", best validation accuracy {_pct(best['accuracy'])} at epoch {best['epoch']}"
            lines.append(line)
    return lines


def plot_curves(out: Path, methods: list[str], seeds: list[int]) -> list[Path]:
    """``reward.png`` and ``accuracy.png``: the mean over seeds of each GRPO method's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, name, ylabel in [("reward", "reward.png", "mean reward"), ("eval/accuracy", "accuracy.png", "greedy validation accuracy")]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in methods:
            curves = [[(r["step"], r[key]) for r in read_log(out / m / f"seed{s}" / "log.jsonl") if key in r] for s in seeds]
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            steps = [curves[0][i][0] for i in range(n)]
            ax.plot(steps, [sum(c[i][1] for c in curves) / len(curves) for i in range(n)], label=m)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        if ax.lines:
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)
    return written


def load_summary(out: Path) -> dict:
    return json.loads((Path(out) / "results.json").read_text())["summary"]
