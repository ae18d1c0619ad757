"""SFT's per-epoch validation: early stopping at the plateau and the best epoch kept."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from latentrl.cli import main
from latentrl.train import common
from latentrl.train.sft import SFTConfig

TINY = ["n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=64", "per_device_train_batch_size=32",
        "disable_tqdm=true", "task_kwargs={num_steps: 2}", "eval_strategy=epoch", "eval_n=8"]  # fmt: skip


def eval_log(out):
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval/accuracy" in r]


def test_a_flat_validation_curve_stops_after_patience_epochs(tmp_path):
    # lr 0: the accuracy cannot move, so the first epoch stays the best and training stops one epoch later
    assert main(["sft", *TINY, f"output_dir={tmp_path}", "mode=cot", "num_train_epochs=6", "learning_rate=0",
                 "early_stopping_patience=1"]) == 0  # fmt: skip
    assert [r["epoch"] for r in eval_log(tmp_path)] == [1, 2]
    state = json.loads((tmp_path / "best" / "trainer_state.json").read_text())
    assert state["best"]["epoch"] == 1
    final = json.loads((tmp_path / "final" / "trainer_state.json").read_text())
    assert (final["stopped"], final["epoch"]) == ("plateau", 2)
    # a rerun in the same directory resumes at the plateau and trains no further epoch
    assert main(["sft", *TINY, f"output_dir={tmp_path}", "mode=cot", "num_train_epochs=6", "learning_rate=0",
                 "early_stopping_patience=1"]) == 0  # fmt: skip
    assert [r["epoch"] for r in eval_log(tmp_path)] == [1, 2]


def test_the_best_epoch_of_the_last_stage_is_kept(tmp_path, monkeypatch):
    # scripted validation accuracies; stage 1 (epoch 1) is not the last stage, so its 0.9 does not count
    scores = iter([0.9, 0.5, 0.7, 0.6, 0.4, 0.3])
    monkeypatch.setattr(common, "validation_accuracy", lambda *a, **k: next(scores))
    assert main(["sft", *TINY, f"output_dir={tmp_path}", "mode=coconut", "start_stage=1", "max_latent_stage=2",
                 "final_stage=2", "num_train_epochs=6", "save_steps=2", "save_total_limit=10", "early_stopping_patience=2",
                 "load_best_model_at_end=true"]) == 0  # fmt: skip
    log = eval_log(tmp_path)
    assert [(r["epoch"], r["stage"], r["eval/accuracy"]) for r in log] == [(1, 1, 0.9), (2, 2, 0.5), (3, 2, 0.7),
                                                                           (4, 2, 0.6), (5, 2, 0.4)]  # fmt: skip
    best = AutoModelForCausalLM.from_pretrained(tmp_path / "best").state_dict()
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final").state_dict()
    last = AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-10").state_dict()  # 2 steps/epoch x 5
    assert all(torch.equal(best[k], final[k]) for k in best)
    assert not all(torch.equal(best[k], last[k]) for k in best)
    assert json.loads((tmp_path / "final" / "latentrl.json").read_text())["curriculum_stage"] == 2


def test_eval_options_are_checked():
    with pytest.raises(ValueError, match="'no' or 'epoch'"):
        SFTConfig(eval_strategy="steps")
    with pytest.raises(ValueError, match="need eval_strategy=epoch"):
        SFTConfig(early_stopping_patience=2)
    with pytest.raises(ValueError, match="never reaches its last stage"):
        SFTConfig(eval_strategy="epoch", load_best_model_at_end=True, mode="coconut", start_stage=1, max_latent_stage=3,
                  num_train_epochs=2)  # fmt: skip
    with pytest.raises(ValueError, match="eval_n"):
        SFTConfig(eval_strategy="epoch", eval_n=0)
    with pytest.raises(ValueError, match="needs eval_data_path"):
        common.validation_examples(SFTConfig(task="gsm8k", eval_n=10))


def test_data_seed_draws_the_problems_and_seed_the_order(tmp_path, monkeypatch):
    """``data_seed`` picks which problems are trained on (train and validation); ``seed`` keeps the rest."""
    import latentrl.tasks

    drawn = []
    real = latentrl.tasks.load_examples
    monkeypatch.setattr(latentrl.tasks, "load_examples", lambda *a, **k: (a[2] and drawn.append(a[:4])) or real(*a, **k))
    monkeypatch.setattr(common, "validation_accuracy", lambda *a, **k: 0.5)
    assert main(["sft", *TINY, f"output_dir={tmp_path}", "mode=cot", "num_train_epochs=1", "seed=9", "data_seed=4"]) == 0
    assert drawn == [("arith", "train", 64, 4), ("arith", "validation", 8, 4)]
    assert main(["sft", *TINY, f"output_dir={tmp_path / 'b'}", "mode=cot", "num_train_epochs=1", "seed=9"]) == 0
    assert drawn[2:] == [("arith", "train", 64, 9), ("arith", "validation", 8, 9)]


def test_a_stage_switch_resets_the_optimizer_but_not_the_schedule(tmp_path):
    """``reset_optimizer`` gives each Coconut stage fresh AdamW moments; the linear decay goes on over the
    global step (a fresh scheduler would jump back to the initial rate)."""
    from latentrl.train.run import read_log

    out = tmp_path / "run"
    assert main(["sft", *TINY, f"output_dir={out}", "mode=coconut", "start_stage=0", "max_latent_stage=2",
                 "epochs_per_stage=1", "num_train_epochs=3", "lr_scheduler_type=linear", "learning_rate=1e-3",
                 "reset_optimizer=true", "logging_steps=1", "save_steps=0"]) == 0  # fmt: skip
    steps = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert len({r["stage"] for r in steps}) == 3 and len(steps) == 6  # 64 examples / 32: two steps per stage
    total = len(steps)
    for r in steps:  # transformers' linear schedule without warm-up: lr = lr0 * (1 - step / total)
        assert r["learning_rate"] == pytest.approx(1e-3 * (1 - r["step"] / total), rel=1e-6), r["step"]


def test_the_time_budget_counts_the_time_before_a_resume(tmp_path):
    """``max_time_seconds`` is the run's training time, over every process that resumed it: a run resumed
    with a budget it has already spent stops after one step."""
    out = tmp_path / "run"
    args = ["sft", *TINY, f"output_dir={out}", "mode=cot", "num_train_examples=192", "num_train_epochs=1",
            "save_steps=1", "logging_steps=1"]  # fmt: skip
    assert main([*args, "max_steps=3"]) == 0
    spent = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["train_seconds"]
    assert spent > 0
    assert main([*args, f"max_time_seconds={spent}", "resume_from_checkpoint=true"]) == 0
    state = json.loads((out / "final" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["stopped"] == "budget"  # one step, then the budget is out
