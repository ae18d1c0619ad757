"""The sweep end to end at toy scale, and its statistics against a hand computation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from latentrl.cli import main
from latentrl.experiments.report import summarize


def test_summary_statistics_by_hand():
    results = {("sft", s): {"accuracy": a, "train_seconds": 0.0} for s, a in zip([0, 1, 2], [0.4, 0.5, 0.6])}
    results |= {("dropout_grpo", s): {"accuracy": a, "train_seconds": 10.0} for s, a in zip([0, 1, 2], [0.5, 0.6, 0.8])}
    summary = summarize(results, [0, 1, 2], ["sft", "dropout_grpo"])
    row = summary["dropout_grpo"]
    assert row["mean"] == pytest.approx(19 / 30)
    assert row["std"] == pytest.approx(((0.5 - 19 / 30) ** 2 + (0.6 - 19 / 30) ** 2 + (0.8 - 19 / 30) ** 2) ** 0.5 / 2**0.5)
    diffs = [0.1, 0.1, 0.2]  # paired differences; mean 0.1333, sd 0.0577, t_{0.975,2} = 4.303
    half = 4.303 * 0.0577350 / 3**0.5
    assert row["paired_diff_vs_sft"]["mean"] == pytest.approx(sum(diffs) / 3)
    assert row["paired_diff_vs_sft"]["ci95"] == pytest.approx([sum(diffs) / 3 - half, sum(diffs) / 3 + half], abs=1e-3)


def test_sweep_cli_toy(tmp_path):
    tiny = ["n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=64", "per_device_train_batch_size=32",
            "disable_tqdm=true", "task_kwargs={num_steps: 2}"]  # fmt: skip
    assert main(["sft", f"output_dir={tmp_path / 'sft'}", "mode=coconut", "start_stage=1", "max_latent_stage=1",
                 "num_train_epochs=1", *tiny]) == 0  # fmt: skip
    args = ["sweep", f"out={tmp_path / 'sweep'}", f"sft_checkpoints=[{tmp_path / 'sft' / 'final'}]", "seeds=[0, 1]",
            "methods=[sft, dropout_grpo, greedy_none, sft_more]", "eval_n=8", "task_kwargs={num_steps: 2}",
            "grpo={max_steps: 2, num_generations: 4, generation_batch_size: 8, per_device_train_batch_size: 8, "
            "max_completion_length: 12, eval_steps: 1, eval_n: 4}", "sft_more={per_device_train_batch_size: 32}"]  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "sweep"
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert set(summary) == {"sft", "dropout_grpo", "greedy_none", "sft_more"}
    assert "paired_diff_vs_sft" in summary["dropout_grpo"] and len(summary["sft"]["accuracy_by_seed"]) == 2
    assert (out / "reward.png").exists() and (out / "accuracy.png").exists()
    assert "| dropout_grpo |" in (out / "table.md").read_text()
    meta = json.loads((out / "sft_more" / "seed0" / "final" / "latentrl.json").read_text())
    assert meta["curriculum_stage"] == 1 and meta["num_latents"] == 1  # continued at the checkpoint's own stage
    # a rerun skips finished runs and gives the same table
    table = (out / "table.md").read_text()
    assert main(args) == 0 and (out / "table.md").read_text() == table


@pytest.mark.parametrize("data", ["sft", "fresh_prompts"])
def test_sweep_trains_a_baseline_per_seed_and_keeps_the_data_budget(tmp_path, data):
    """``sft``: each seed's baseline is trained by the sweep. ``data=sft``: RL and sft_more see only its problems;
    ``data=fresh_prompts``: RL draws its own prompts, sft_more still sees only the SFT problems."""
    import yaml

    out = tmp_path / "sweep"
    args = ["sweep", f"out={out}", "seeds=[3, 4]", "methods=[sft, dropout_grpo, sft_more]", "eval_n=8", f"data={data}",
            "task_kwargs={num_steps: 2}",
            "sft=[{mode: cot, num_train_epochs: 1, num_train_examples: 48, n_layer: 2, n_embd: 32, n_head: 2, "
            "per_device_train_batch_size: 16}, {mode: coconut, start_stage: 1, max_latent_stage: 1, num_train_epochs: 2, "
            "num_train_examples: 48, per_device_train_batch_size: 16, eval_strategy: epoch, eval_n: 4}]",
            "grpo={max_steps: 1, num_generations: 4, generation_batch_size: 8, per_device_train_batch_size: 8, "
            "max_completion_length: 8, num_train_examples: 40}", "sft_more={per_device_train_batch_size: 16}"]  # fmt: skip
    assert main(args) == 0
    for seed in (3, 4):
        cot = yaml.safe_load((out / "sft" / f"seed{seed}" / "run0" / "config.yaml").read_text())
        baseline = yaml.safe_load((out / "sft" / f"seed{seed}" / "run1" / "config.yaml").read_text())
        assert cot["seed"] == baseline["seed"] == seed and baseline["num_train_examples"] == 48
        assert baseline["model_name_or_path"] == str(out / "sft" / f"seed{seed}" / "run0" / "final")
        rl = yaml.safe_load((out / "dropout_grpo" / f"seed{seed}" / "config.yaml").read_text())
        assert (rl["data_seed"], rl["num_train_examples"]) == ((seed, 48) if data == "sft" else (1000 + seed, 40))
        assert rl["model_name_or_path"] == str(out / "sft" / f"seed{seed}" / "run1" / "final")
        more = yaml.safe_load((out / "sft_more" / f"seed{seed}" / "config.yaml").read_text())
        # the SFT run's problems (data_seed), in an order of its own (seed)
        assert (more["data_seed"], more["seed"], more["num_train_examples"]) == (seed, 1000 + seed, 48)
    table = (out / "table.md").read_text()
    assert "- seed 3, run1: 2 epochs, ended by the epoch cap, best validation accuracy" in table


def test_sweep_needs_exactly_one_source_of_baselines():
    from latentrl.experiments.sweep import SweepConfig

    with pytest.raises(ValueError, match="either sft_checkpoints .* or sft"):
        SweepConfig()
    with pytest.raises(ValueError, match="either sft_checkpoints .* or sft"):
        SweepConfig(sft_checkpoints=["a"], sft=[{"mode": "cot"}])
    with pytest.raises(ValueError, match="the sft runs differ in num_train_examples"):
        SweepConfig(sft=[{"mode": "cot", "num_train_examples": 10}, {"mode": "coconut"}], data="sft")
    SweepConfig(sft=[{"mode": "cot", "num_train_examples": 10}, {"mode": "coconut"}], data="fresh")  # no shared budget
    with pytest.raises(ValueError, match="fresh_prompts"):
        SweepConfig(sft_checkpoints=["a"], data="more")


def test_sft_chain_resumes_after_its_last_finished_run(tmp_path, monkeypatch):
    """A baseline whose last run's final/ exists (e.g. copied from another machine without the earlier
    runs) is reused as it is: no run of its chain is trained again."""
    from latentrl.experiments import sweep
    from latentrl.train import sft

    trained = []
    monkeypatch.setattr(sft, "train_sft", lambda c: trained.append(c.output_dir) or tmp_path / "new")
    cfg = sweep.SweepConfig(out=str(tmp_path), sft=[{"mode": "cot"}, {"mode": "coconut"}], data="fresh")
    last = tmp_path / "sft" / "seed0" / "run1" / "final"
    last.mkdir(parents=True)
    (last / "latentrl.json").write_text("{}")
    assert sweep.train_sft_baseline(0, cfg)[-1] == str(last) and trained == []
    # only the first run finished: the second is trained from it
    cfg = sweep.SweepConfig(out=str(tmp_path), sft=[{"mode": "cot"}, {"mode": "coconut"}], data="fresh")
    assert sweep.train_sft_baseline(1, cfg) == [str(tmp_path / "new")] * 2 and len(trained) == 2  # seed 1 has nothing yet


def test_baseline_line_from_the_log_when_final_has_no_trainer_state(tmp_path):
    from latentrl.experiments.report import baseline_training

    run = tmp_path / "sft" / "seed2" / "run1"
    (run / "final").mkdir(parents=True)
    records = [{"eval/accuracy": 0.3, "epoch": 1, "stage": 1}, {"eval/accuracy": 0.5, "epoch": 2, "stage": 2},
               {"eval/accuracy": 0.4, "epoch": 3, "stage": 2}, {"loss": 0.1, "epoch": 3.5}]  # fmt: skip
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert baseline_training(tmp_path, [2]) == [
        "- seed 2, run1: 3 epochs, ended by an unrecorded reason (no trainer state in final/), "
        "best validation accuracy 50.0 at epoch 2"
    ]


@pytest.mark.slow
def test_sweep_parallel_script_toy(tmp_path):
    """scripts/sweep_parallel.sh: each seed's baseline, then each method as its own process, then the
    table over all seeds, equal to what the runs wrote."""
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump({
        "seeds": [0, 1], "methods": ["sft", "grpo_sampling", "dropout_grpo", "dropout_step", "greedy_none", "sft_more"],
        "eval_n": 4, "task_kwargs": {"num_steps": 2}, "data": "fresh_prompts",
        "sft": [{"mode": "coconut", "start_stage": 1, "max_latent_stage": 1, "num_train_epochs": 1,
                 "num_train_examples": 32, "n_layer": 1, "n_embd": 16, "n_head": 2, "per_device_train_batch_size": 16}],
        "grpo": {"max_steps": 1, "num_generations": 2, "generation_batch_size": 4, "per_device_train_batch_size": 4,
                 "max_completion_length": 6, "num_train_examples": 8},
        "sft_more": {"per_device_train_batch_size": 16}}))  # fmt: skip
    out = tmp_path / "out"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "LATENTRL": f"{sys.executable} -m latentrl.cli", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(root / "scripts" / "sweep_parallel.sh"), str(cfg), str(out), "0 1"],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    runs = {(r["method"], r["seed"]) for r in json.loads((out / "results.json").read_text())["runs"]}
    assert len(runs) == 12  # 6 methods x 2 seeds
    for method in ("dropout_grpo", "grpo_sampling", "dropout_step", "greedy_none"):
        assert (out / "logs" / f"seed0_{method}.txt").exists()
    assert "| sft_more |" in done.stdout  # the table, printed at the end


def test_soft_sweep_methods_toy(tmp_path):
    """The methods of the soft-thinking comparison: CoT, discrete GRPO and SofT-GRPO from it, soft thinking
    without RL, the GRPO model in soft mode; sampled metrics with paired differences to discrete GRPO."""
    out = tmp_path / "sweep"
    args = ["sweep", f"out={out}", "seeds=[0, 1]", "methods=[cot, discrete_grpo, soft_grpo, soft_thinking, discrete_grpo_soft]",
            "baseline=discrete_grpo", "eval_n=6", "eval_samples=4", "data=fresh_prompts", "task_kwargs={num_steps: 2}",
            "sft=[{mode: cot, num_train_epochs: 1, num_train_examples: 48, n_layer: 2, n_embd: 32, n_head: 2, "
            "per_device_train_batch_size: 16}]",
            "grpo={max_steps: 1, num_generations: 4, generation_batch_size: 8, per_device_train_batch_size: 8, "
            "max_completion_length: 12}"]  # fmt: skip
    assert main(args) == 0
    runs = {(r["method"], r["seed"]): r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs[("discrete_grpo_soft", 0)]["checkpoint"] == runs[("discrete_grpo", 0)]["checkpoint"]
    assert runs[("soft_thinking", 1)]["checkpoint"] == runs[("cot", 1)]["checkpoint"]
    assert runs[("soft_thinking", 0)]["mean_thinking_steps"] > 0 == runs[("cot", 0)]["mean_thinking_steps"]
    soft_cfg = yaml.safe_load((out / "soft_grpo" / "seed0" / "config.yaml").read_text())
    assert (soft_cfg["thinking_mode"], soft_cfg["exploration"]) == ("soft", "gumbel")
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert "pass@4" in summary["soft_grpo"]["sampled"] and "paired_diff" in summary["soft_grpo"]["sampled"]["pass@4"]
    table = (out / "table.md").read_text()
    assert "Δ vs discrete_grpo" in table and "| soft_thinking |" in table and "pass@4" in table


def test_bupo_sweep_methods_toy(tmp_path):
    """BuPO arms: their control's run plus the sweep's bupo keys, paired with that control in the table."""
    out = tmp_path / "sweep"
    args = ["sweep", f"out={out}", "seeds=[0, 1]", "methods=[cot, discrete_grpo, bupo_grpo]", "baseline=cot",
            "eval_n=6", "eval_samples=2", "data=fresh_prompts", "task_kwargs={num_steps: 2}",
            "sft=[{mode: cot, num_train_epochs: 1, num_train_examples: 48, n_layer: 2, n_embd: 32, n_head: 2, "
            "per_device_train_batch_size: 16}]", "bupo={bupo_layer: 1, bupo_steps: 1}",
            "grpo={max_steps: 2, num_generations: 4, generation_batch_size: 8, per_device_train_batch_size: 8, "
            "max_completion_length: 12}"]  # fmt: skip
    assert main(args) == 0
    bupo_cfg = yaml.safe_load((out / "bupo_grpo" / "seed0" / "config.yaml").read_text())
    grpo_cfg = yaml.safe_load((out / "discrete_grpo" / "seed0" / "config.yaml").read_text())
    assert (bupo_cfg["bupo_layer"], bupo_cfg["bupo_steps"]) == (1, 1) and grpo_cfg["bupo_steps"] == 0
    assert {k: v for k, v in bupo_cfg.items() if not k.startswith("bupo") and k != "output_dir"} == {
        k: v for k, v in grpo_cfg.items() if not k.startswith("bupo") and k != "output_dir"}
    log = [json.loads(line) for line in (out / "bupo_grpo" / "seed0" / "log.jsonl").read_text().splitlines()]
    assert [r["bupo/layer"] for r in log if "bupo/layer" in r][:2] == [1, 0]  # phase 1, then the full policy
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["bupo_grpo"]["vs_control"]["control"] == "discrete_grpo"
    assert "paired_diff" in summary["bupo_grpo"]["vs_control"]["sampled"]["pass@2"]
    table = (out / "table.md").read_text()
    assert "| bupo_grpo | discrete_grpo |" in table and "tokens / solved" in table


@pytest.mark.parametrize("keys, message", [
    (["methods=[discrete_grpo, bupo_grpo]", "baseline=discrete_grpo"], "bupo block with bupo_layer"),
    (["methods=[cot, bupo_grpo]", "baseline=cot", "bupo={bupo_layer: 1, bupo_steps: 1}"], "include discrete_grpo"),
    (["methods=[cot, discrete_grpo]", "baseline=cot", "bupo={bupo_layer: 1, bupo_steps: 1}"], "no bupo_* method"),
    (["methods=[discrete_grpo, bupo_grpo]", "baseline=discrete_grpo", "bupo={bupo_layer: 1, bupo_steps: 1, lr: 1}"],
     "bupo_* keys only"),
])  # fmt: skip
def test_sweep_bupo_block_errors(tmp_path, capsys, keys, message):
    args = ["sweep", f"out={tmp_path / 's'}", "sft_checkpoints=[x]", *keys]
    assert main(args) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_control_pairs_and_tokens_per_solved_by_hand():
    from latentrl.eval.evaluate import per_solved

    assert per_solved(30, 4) == 7.5 and per_solved(30, 0) is None
    results = {("a", s): {"accuracy": x, "train_seconds": 0.0, "tokens_per_solved": t, "pass@2": p}
               for s, x, t, p in zip([0, 1, 2], [0.4, 0.5, 0.6], [10.0, None, 20.0], [0.5, 0.6, 0.7])}  # fmt: skip
    results |= {("b", s): {"accuracy": x, "train_seconds": 0.0, "tokens_per_solved": 8.0, "pass@2": p}
                for s, x, p in zip([0, 1, 2], [0.5, 0.5, 0.8], [0.5, 0.8, 0.9])}  # fmt: skip
    summary = summarize(results, [0, 1, 2], ["a", "b"], baseline="a", controls={"b": "a"})
    assert summary["a"]["tokens_per_solved"] == 15.0  # the seed without a solved problem is left out
    vs = summary["b"]["vs_control"]
    assert vs["control"] == "a" and vs["accuracy"]["mean"] == pytest.approx(0.1)
    assert vs["sampled"]["pass@2"]["paired_diff"]["mean"] == pytest.approx((0.0 + 0.2 + 0.2) / 3)
    assert "vs_control" not in summary["a"]
