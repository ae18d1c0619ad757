"""scripts/grpo_grid.sh and scripts/grid_table.py: a pilot grid of GRPO settings x seeds, and its curves."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentrl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def grid_table():
    spec = importlib.util.spec_from_file_location("grid_table", ROOT / "scripts" / "grid_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_log(path: Path, evals: dict[int, float]) -> None:
    path.mkdir(parents=True)
    rows = [{"step": s, "eval/accuracy": a} for s, a in evals.items()] + [{"step": 1, "reward": 0.5}]
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_grid_table_means_the_gain_over_seeds_at_the_steps_every_seed_reached(tmp_path, capsys):
    write_log(tmp_path / "a" / "seed1", {0: 0.40, 25: 0.50, 50: 0.55})
    write_log(tmp_path / "a" / "seed3", {0: 0.20, 25: 0.22})  # stopped earlier (time limit)
    curves = grid_table().curves(tmp_path)
    assert curves["a"] == {1: {0: 0.40, 25: 0.50, 50: 0.55}, 3: {0: 0.20, 25: 0.22}}
    grid_table().main(str(tmp_path))
    # step 25: ((0.50 - 0.40) + (0.22 - 0.20)) / 2 = 6 points; step 50 is missing on seed 3
    assert capsys.readouterr().out.strip() == "a (seeds [1, 3]): 0:+0.0 25:+6.0"


@pytest.mark.slow
def test_grpo_grid_script_toy(tmp_path):
    """Two settings x two seeds, each its own process, then the table of validation curves."""
    tiny = ["n_layer=1", "n_embd=16", "n_head=2", "num_train_examples=32", "per_device_train_batch_size=16",
            "disable_tqdm=true", "task_kwargs={num_steps: 2}", "mode=coconut", "start_stage=1", "max_latent_stage=1",
            "num_train_epochs=1"]  # fmt: skip
    for seed in (0, 1):
        assert main(["sft", f"output_dir={tmp_path / 'sft' / f'seed{seed}' / 'run1'}", f"seed={seed}", *tiny]) == 0
    grid = tmp_path / "grid.txt"
    common = ("max_steps=2 num_generations=2 generation_batch_size=4 per_device_train_batch_size=4 eval_steps=1 "
              "eval_n=4 num_train_examples=8 max_completion_length=6 task_kwargs={\"num_steps\":2}")  # fmt: skip
    grid.write_text(f"# a comment\n\nthought {common}\nnative {common} dropout_sites=[mlp,attn] dropout_p=0.3\n")
    env = {**os.environ, "LATENTRL": f"{sys.executable} -m latentrl.cli", "OMP_NUM_THREADS": "1",
           "SFT": str(tmp_path / "sft"), "TIMEOUT": "300"}  # fmt: skip
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "grpo_grid.sh"), str(grid), str(out), "0 1"],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = sorted(done.stdout.strip().splitlines())
    assert [line.split(" (")[0] for line in lines] == ["native", "thought"]
    assert all("(seeds [0, 1]): 0:+0.0 1:" in line and " 2:" in line for line in lines), lines
    cfg = (out / "native" / "seed1" / "config.yaml").read_text()
    assert "data_seed: 1001" in cfg and "dropout_p: 0.3" in cfg and "- mlp" in cfg
