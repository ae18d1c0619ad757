"""GRPO engine: recorded-noise replay, the collapse without exploration, the CLI run, bad rewards."""

import json
import zlib

import pytest
import torch

from latentrl.cli import main
from latentrl.exploration import make_exploration
from latentrl.models import ThinkingConfig, build_tiny_model
from latentrl.models.readout import FULL_POLICY, PolicyHead
from latentrl.rollout import completion_logps
from latentrl.tasks import load_examples
from latentrl.train.grpo import GRPOConfig, make_rollout, rollout_seeds, update
from latentrl.rewards import answer_match

from cli_runs import BY_TEXT, TESTS, by_text, grpo_from_a_cot_checkpoint


def tiny_coconut(seed=0):
    # HF's default init: an untrained model's answers then depend visibly on its (large) thoughts
    model, tok = build_tiny_model("gpt2", n_layer=2, n_embd=32, n_head=2, max_length=128, seed=seed, thought_scale_init=False)
    with torch.no_grad():  # untrained models favour special tokens, which decode to ""; make them rare
        model.get_input_embeddings().weight[: len(tok.all_special_ids)] *= 0.01
    return model.eval(), tok, ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=3)


def rollout_of(cfg: GRPOConfig, model, tok, thinking, n_prompts=4, rewards=(answer_match,)):
    batch = load_examples("arith", "train", n_prompts, 0, num_steps=2)
    seeds = rollout_seeds(cfg.seed, 0, n_prompts * cfg.num_generations)
    exploration = make_exploration(cfg.exploration, **cfg.exploration_kwargs())
    gen = torch.Generator().manual_seed(0)
    r, _ = make_rollout(model, tok, thinking, batch, cfg, exploration, seeds, gen, list(rewards), [1.0] * len(rewards))
    return r, exploration


@pytest.mark.parametrize("sites", [["thought"], ["mlp", "attn"], ["block", "thought"]])
def test_replayed_noise_reproduces_the_rollout_logps(sites):
    model, tok, thinking = tiny_coconut()
    cfg = GRPOConfig(model_name_or_path="x", num_generations=4, generation_batch_size=16, per_device_train_batch_size=16,
                     dropout_p=0.3, dropout_sites=sites, dropout_cover_prefill=True, dropout_cover_answer=True,
                     max_completion_length=8)  # fmt: skip
    r, exploration = rollout_of(cfg, model, tok, thinking)
    with torch.no_grad():
        a = completion_logps(model, r, exploration).logps
        b = completion_logps(model, r, exploration).logps
    assert torch.equal(a, b)  # ratio exactly 1 at the first iteration
    # the same log-probs as the sampler recorded while decoding (cached vs one-pass recompute)
    from latentrl.models import generate
    from latentrl.models.layout import encode_prompt

    batch = load_examples("arith", "train", 4, 0, num_steps=2)
    gen = generate(model, [encode_prompt(tok, ex.question, thinking) for ex in batch], latent_token_id=thinking.latent_token_id,
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, num_generations=4, max_new_tokens=8,
                   temperature=1.0, exploration=exploration, seeds=r.seeds, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(gen.completion_ids, r.completion_ids)
    m = r.completion_mask.bool()
    torch.testing.assert_close(a[m], gen.sample_logps[m], atol=1e-4, rtol=1e-4)
    # and a different seed gives a different latent trajectory
    r2 = r.select(slice(None))
    r2.seeds = r.seeds + 1
    with torch.no_grad():
        c = completion_logps(model, r2, exploration).logps
    assert not torch.equal(a, c)


def zero_and_grads(model, cfg, r, exploration):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    grads = {}
    hook = lambda name: (lambda g: grads.__setitem__(name, grads.get(name, 0) + g))  # noqa: E731  (summed over micro-batches)
    handles = [p.register_hook(hook(n)) for n, p in model.named_parameters()]
    metrics = update(model, r, cfg, exploration, opt, sched)
    for h in handles:
        h.remove()
    return metrics, grads


def parity_reward(prompts, completions, **kw):
    return [float(zlib.crc32(c.encode()) % 2) for c in completions]


def test_no_exploration_with_greedy_answers_collapses():
    model, tok, thinking = tiny_coconut()
    cfg = GRPOConfig(model_name_or_path="x", exploration="none", temperature=0.0, num_generations=4,
                     generation_batch_size=16, per_device_train_batch_size=8, max_completion_length=8)  # fmt: skip
    r, exploration = rollout_of(cfg, model, tok, thinking, rewards=(parity_reward,))
    G = cfg.num_generations
    assert bool((r.rewards.view(-1, G).std(1) == 0).all())  # identical rollouts in every group
    assert bool((r.advantages == 0).all())
    metrics, grads = zero_and_grads(model, cfg, r, exploration)
    assert grads and all(bool((g == 0).all()) for g in grads.values())  # the policy gradient is exactly zero


def test_shared_dropout_mask_breaks_the_collapse():
    model, tok, thinking = tiny_coconut()
    cfg = GRPOConfig(model_name_or_path="x", exploration="dropout", dropout_p=0.3, temperature=0.0, num_generations=4,
                     generation_batch_size=16, per_device_train_batch_size=8, max_completion_length=8)  # fmt: skip
    r, exploration = rollout_of(cfg, model, tok, thinking, rewards=(parity_reward,))
    assert r.rewards.view(-1, 4).std(1).max() > 0
    texts = [r.completions[i : i + 4] for i in range(0, 16, 4)]
    assert any(len(set(t)) > 1 for t in texts)
    metrics, grads = zero_and_grads(model, cfg, r, exploration)
    assert metrics["grad_norm"] > 0 and any(bool((g != 0).any()) for g in grads.values())


def test_nan_reward_is_a_clear_error():
    model, tok, thinking = tiny_coconut()
    cfg = GRPOConfig(model_name_or_path="x", num_generations=2, generation_batch_size=4, per_device_train_batch_size=4,
                     max_completion_length=4)  # fmt: skip

    def nan_reward(prompts, completions, **kw):
        return [float("nan")] + [0.0] * (len(completions) - 1)

    with pytest.raises(ValueError, match="nan_reward.*non-finite.*rows \\[0\\]"):
        rollout_of(cfg, model, tok, thinking, n_prompts=2, rewards=(nan_reward,))


def test_grpo_cli_end_to_end(tmp_path):
    tiny = ["n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=64", "per_device_train_batch_size=32",
            "disable_tqdm=true", "task_kwargs={num_steps: 2}"]  # fmt: skip
    assert main(["sft", f"output_dir={tmp_path / 'sft'}", "mode=coconut", "start_stage=2", "max_latent_stage=2",
                 "num_train_epochs=1", *tiny]) == 0  # fmt: skip
    args = ["grpo", f"output_dir={tmp_path / 'grpo'}", f"model_name_or_path={tmp_path / 'sft' / 'final'}",
            "max_steps=2", "num_generations=4", "generation_batch_size=8", "per_device_train_batch_size=4",
            "num_iterations=2", "beta=0.04", "max_completion_length=8", "task_kwargs={num_steps: 2}",
            "disable_tqdm=true", "eval_steps=2", "eval_n=4", "save_steps=1"]  # fmt: skip
    assert main(args) == 0
    log = [json.loads(x) for x in (tmp_path / "grpo" / "log.jsonl").read_text().splitlines()]
    for key in ["reward", "reward_std", "frac_reward_zero_std", "kl", "clip_ratio/region_mean", "entropy",
                "completions/mean_length", "latent/distinct_answers", "latent/trajectory_distance", "grad_norm",
                "time/rollout", "time/backward"]:  # fmt: skip
        assert key in log[1], key
    assert "eval/accuracy" in log[0] and "eval/accuracy" in log[-1]
    meta = json.loads((tmp_path / "grpo" / "final" / "latentrl.json").read_text())
    assert meta["thinking_mode"] == "coconut" and meta["num_latents"] == 2


def test_reward_functions_load_by_name_and_combine_with_weights():
    from latentrl.rollout import score
    from latentrl.train.grpo import load_reward_func

    assert load_reward_func("latentrl.rewards:answer_match") is answer_match
    with pytest.raises(ValueError, match="module:function"):
        load_reward_func("answer_match")
    with pytest.raises(ValueError, match="cannot load"):
        load_reward_func("latentrl.rewards:nope")

    def length_penalty(prompts, completions, **kw):
        return [-len(c) / 10 for c in completions]

    total, parts = score([answer_match, length_penalty], [1.0, 0.5], ["q", "q"], ["### 3", "### 4"], {"answer": ["3", "3"]})
    torch.testing.assert_close(total, torch.tensor([1.0 - 0.25, -0.25]))
    assert set(parts) == {"answer_match", "length_penalty"}


def test_interrupted_grpo_run_resumes_to_the_same_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    tiny = ["n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=64", "per_device_train_batch_size=32",
            "disable_tqdm=true", "task_kwargs={num_steps: 2}"]  # fmt: skip
    assert main(["sft", f"output_dir={tmp_path / 'sft'}", "mode=coconut", "start_stage=1", "max_latent_stage=1",
                 "num_train_epochs=1", *tiny]) == 0  # fmt: skip
    common = [f"model_name_or_path={tmp_path / 'sft' / 'final'}", "num_generations=4", "generation_batch_size=8",
              "per_device_train_batch_size=8", "max_completion_length=8", "task_kwargs={num_steps: 2}",
              "disable_tqdm=true", "save_steps=1", "learning_rate=1e-3"]  # fmt: skip
    assert main(["grpo", f"output_dir={tmp_path / 'full'}", "max_steps=3", *common]) == 0
    assert main(["grpo", f"output_dir={tmp_path / 'cut'}", "max_steps=1", *common]) == 0
    assert main(["grpo", f"output_dir={tmp_path / 'cut'}", "max_steps=3", *common, "resume_from_checkpoint=true"]) == 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "full" / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "cut" / "final").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("scale_rewards,temperature", [("none", 0), ("batch", 1)])
def test_two_processes_equal_one_process(tmp_path, scale_rewards, temperature):
    """torchrun with 2 CPU processes (each rolling out half the groups) = 1 process, same global batch.

    Dropout masks and sampled tokens (temperature 1) are functions of each row's seed, so the rollouts
    are the same on any number of processes; ``scale_rewards=batch`` needs every process's rewards.
    """
    import os
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    tiny = ["n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=64", "per_device_train_batch_size=32",
            "disable_tqdm=true", "task_kwargs={num_steps: 2}"]  # fmt: skip
    assert main(["sft", f"output_dir={tmp_path / 'sft'}", "mode=coconut", "start_stage=1", "max_latent_stage=1",
                 "num_train_epochs=1", *tiny]) == 0  # fmt: skip
    common = ["grpo", f"model_name_or_path={tmp_path / 'sft' / 'final'}", "num_generations=4", "generation_batch_size=16",
              "per_device_train_batch_size=4", "max_completion_length=8", "task_kwargs={num_steps: 2}", "max_steps=2",
              "disable_tqdm=true", "learning_rate=1e-2", f"temperature={temperature}", "dropout_p=0.5", "dropout_sites=[block]", "dropout_cover_answer=true",
              "dropout_cover_prefill=true", f"scale_rewards={scale_rewards}", "beta=0.04", "save_steps=0"]  # fmt: skip
    common += [BY_TEXT]  # an untrained policy rarely gets answers right: a reward that varies within groups
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "latentrl.cli",
                          *common, f"output_dir={tmp_path / 'two'}"], capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    assert main([*common, f"output_dir={tmp_path / 'one'}"]) == 0
    one_log = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    two_log = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two_log] == [1, 2]  # one process writes the log
    for a, b in zip(one_log, two_log):
        for key in ["reward", "reward_std", "frac_reward_zero_std", "kl", "loss", "grad_norm"]:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert one_log[0]["grad_norm"] > 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_prompts_that_do_not_split_over_processes_are_a_clear_error(tmp_path, monkeypatch):
    import accelerate

    monkeypatch.setattr(accelerate.Accelerator, "num_processes", property(lambda self: 3))
    with pytest.raises(ValueError, match="4 prompts per step cannot be split over 3 processes"):
        from latentrl.train.grpo import train_grpo

        train_grpo(GRPOConfig(model_name_or_path="x", output_dir=str(tmp_path), num_generations=4, generation_batch_size=16,
                              per_device_train_batch_size=4))  # fmt: skip


def compile_spy(monkeypatch, backend="aot_eager"):
    """``torch.compile`` of ``latentrl.models.latent`` on ``backend`` (AOTAutograd's forward and backward graphs
    run without a C++ build), recording whether gradients were on at each call of a compiled function."""
    import latentrl.models.latent as latent

    real, grad_modes = torch.compile, []

    def spying_compile(fn, **kw):
        compiled = real(fn, backend=backend, **kw)

        def call(*a, **k):
            assert getattr(torch._dynamo.config, latent._LIMIT_NAME) == latent.RECOMPILE_LIMIT  # raised for every call
            grad_modes.append(torch.is_grad_enabled())
            return compiled(*a, **k)

        return call

    monkeypatch.setattr(latent.torch, "compile", spying_compile)
    return grad_modes


def soft_discrete_model():
    model, tok = build_tiny_model("llama", n_layer=2, n_embd=32, n_head=2, max_length=128, seed=3)
    return model.eval(), tok, ThinkingConfig().with_soft(tok)


def updated(model, tok, thinking, keys: dict, head):
    """One ``update`` on a fresh rollout for each of eager and ``torch_compile_update``: ``[(metrics, grads)]``
    (``grads``: parameter name -> gradient, summed over micro-batches; a parameter autograd never reached is
    absent)."""
    results = []
    for compiled in (False, True):
        cfg = GRPOConfig(model_name_or_path="x", num_generations=4, generation_batch_size=8, per_device_train_batch_size=4,
                         max_completion_length=8, torch_compile_update=compiled, **keys)  # fmt: skip
        r, exploration = rollout_of(cfg, model, tok, thinking, n_prompts=2, rewards=(by_text,))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        grads = {}
        handles = [p.register_hook(lambda g, n=n: grads.__setitem__(n, grads.get(n, 0) + g)) for n, p in model.named_parameters()]
        metrics = update(model, r, cfg, exploration, opt, sched, head=head)
        for h in handles:
            h.remove()
        results.append((metrics, grads))
    return results


@pytest.mark.parametrize("case", ["coconut_dropout", "soft_gumbel"])
def test_the_compiled_update_computes_what_the_eager_one_does(monkeypatch, case):
    """``torch_compile_update`` runs the update's forward (and so its backward) through ``torch.compile``: the
    same loss, gradient norm and gradients as the eager update, for Coconut under a replayed dropout mask on
    every site and SofT-GRPO's Gumbel log-density (default clamp) on a Llama."""
    grad_modes = compile_spy(monkeypatch)
    if case == "soft_gumbel":
        model, tok, thinking = soft_discrete_model()
        keys = {"exploration": "gumbel", "thinking_mode": "soft"}
    else:
        model, tok, thinking = tiny_coconut()
        keys = {"exploration": "dropout", "dropout_p": 0.3, "dropout_sites": ["mlp", "attn", "thought"],
                "dropout_cover_answer": True}  # fmt: skip
    (eager, eager_grads), (ours, our_grads) = updated(model, tok, thinking, keys, FULL_POLICY)
    assert grad_modes and all(grad_modes)  # the compiled forward ran, with gradients, only in the compiled update
    assert eager["grad_norm"] > 0
    for key in ("loss", "grad_norm", "entropy"):
        assert ours[key] == pytest.approx(eager[key], rel=1e-5, abs=1e-7), key
    assert our_grads.keys() == eager_grads.keys()
    for name in eager_grads:
        torch.testing.assert_close(our_grads[name], eager_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_bupo_phase_1_updates_eagerly_so_the_layers_above_get_no_gradient(monkeypatch):
    """In BuPO's phase 1 on a discrete model the blocks above layer l never reach the loss: eager autograd leaves
    their gradients None, which AdamW skips; a compiled backward would return zeros, which AdamW would step
    (moments, weight decay). So ``torch_compile_update`` leaves phase 1 eager, and its gradients are the eager ones."""
    grad_modes = compile_spy(monkeypatch)
    model, tok = build_tiny_model("gpt2", n_layer=3, n_embd=32, n_head=2, max_length=128, seed=0)
    (eager, eager_grads), (ours, our_grads) = updated(model.eval(), tok, ThinkingConfig.from_tokenizer(tok, "discrete"),
                                                      {"exploration": "none"}, PolicyHead(1))  # fmt: skip
    assert grad_modes == []  # nothing compiled ran
    assert our_grads.keys() == eager_grads.keys() and not any(k.startswith(("transformer.h.1.", "transformer.h.2."))
                                                              for k in eager_grads)  # fmt: skip
    assert ours["grad_norm"] == eager["grad_norm"] > 0


def test_grpo_with_a_compiled_update_logs_what_an_eager_run_logs(tmp_path, monkeypatch):
    """Through the CLI: ``torch_compile_update=true`` with old log-probs (two iterations) and a KL reference, both
    recomputed through the compiled forward without gradients, logs the eager run's numbers."""
    from latentrl.train.run import read_log

    import latentrl.models.latent as latent

    grad_modes, limit = compile_spy(monkeypatch), getattr(torch._dynamo.config, latent._LIMIT_NAME)
    _, common = grpo_from_a_cot_checkpoint(tmp_path, max_completion_length=8)
    common += ["per_device_train_batch_size=4", "num_iterations=2", "beta=0.04"]
    logs = {}
    for compiled in ("false", "true"):
        assert main(["grpo", f"output_dir={tmp_path / compiled}", *common, f"torch_compile_update={compiled}"]) == 0
        logs[compiled] = [r[k] for r in read_log(tmp_path / compiled / "log.jsonl") for k in ("loss", "kl", "grad_norm")]
    assert False in grad_modes and True in grad_modes  # old / reference log-probs, and the update
    assert getattr(torch._dynamo.config, latent._LIMIT_NAME) == limit  # restored after the compiled calls
    assert logs["true"] == pytest.approx(logs["false"], rel=1e-4, abs=1e-7)
    assert all(v != 0 for v in logs["false"])
