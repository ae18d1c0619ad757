"""Soft thinking and SofT-GRPO: the Gumbel log-density against a naive re-implementation, top-k = 1
against discrete decoding, the cached loop against a full recompute, replayed noise, the on-policy
gradient identity, the phases passed by the loop, and bad input through the CLI."""

import dataclasses
import itertools
import math

import pytest
import torch
from equivalence import assert_same_logps_and_grads

from latentrl.cli import main
from latentrl.exploration import GumbelExploration, NoExploration
from latentrl.exploration.gumbel import gumbel_noise
from latentrl.losses import policy_loss
from latentrl.models import ThinkingConfig, build_tiny_model
from latentrl.models.layout import encode_prompt
from latentrl.models.thinking import soft_token_logprob, thinking_mode
from latentrl.models.thinking.soft import filter_top_k_top_p
from latentrl.rollout import completion_logps
from latentrl.tasks import load_examples


def naive_soft_logprob(logits, ids, noisy, temperature, reduce, clamp, min_logp):
    """DESIGN §2.3 written out per row and per id, in float64, with math's functions."""
    out = []
    for b in range(logits.shape[0]):
        p = torch.softmax(logits[b].double() / temperature, -1)
        kept = [i for i in range(ids.shape[1]) if math.isfinite(float(noisy[b, i]))]
        total = sum(float(p[ids[b, i]]) for i in kept)
        values = []
        for i in kept:
            p_hat = float(p[ids[b, i]]) / total
            z = float(noisy[b, i]) - math.log(p_hat + 1e-6)
            if clamp is not None:
                z = min(max(z, clamp[0]), clamp[1])
            if min_logp is None or math.log(p_hat) > min_logp:
                values.append(-z - math.exp(-z))
        out.append(sum(values) / max(1, len(values)) if reduce == "mean" else sum(values))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(("reduce", "clamp", "min_logp", "temperature"),
                         list(itertools.product(["mean", "sum"], [(-1.5, 3.0), None], [-3.0, None], [1.0, 0.7])))  # fmt: skip
def test_soft_token_logprob_matches_a_naive_reimplementation(reduce, clamp, min_logp, temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 11, generator=g) * 2
    ids = torch.stack([torch.randperm(11, generator=g)[:4] for _ in range(6)])
    noisy = torch.randn(6, 4, generator=g) * 2 - 1
    noisy[1, 3] = float("-inf")  # an id top-p dropped
    got = soft_token_logprob(logits, ids, noisy, temperature, reduce, clamp, min_logp)
    want = naive_soft_logprob(logits, ids, noisy, temperature, reduce, clamp, min_logp)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bound", [-1.5, 3.0])
def test_a_draw_clamped_when_recorded_passes_its_gradient_whatever_the_rounding(bound):
    """A recorded draw the sampler clamped recomputes to z on the clamp's bound up to rounding: z a few ulps
    inside, on or outside the bound gives the same value (within ON_BOUND) and the same gradient, the one the
    exact arithmetic gives (the clamp's derivative is 1 on its bound); a z clearly outside is clamped, no gradient."""
    from latentrl.models.thinking.soft import ON_BOUND, soft_logprob

    logp = torch.log(torch.tensor([[0.7, 0.3]], dtype=torch.float64))  # p^ = p: the ids are all that is kept
    grads, values = [], []
    for shift in (-3e-7, 0.0, 3e-7, 0.2 if bound > 0 else -0.2):  # the last one clearly outside the range
        lp = logp.clone().requires_grad_(True)
        noisy = torch.log(torch.tensor([0.7, 0.3], dtype=torch.float64) + 1e-6) + torch.tensor([bound + shift, 0.5])
        value = soft_logprob(lp, noisy[None], clamp=(-1.5, 3.0), min_logp=None)
        value.sum().backward()
        grads.append(lp.grad.clone())
        values.append(float(value.detach()))
    on_bound = -bound - math.exp(-bound)
    want = (on_bound - 0.5 - math.exp(-0.5)) / 2
    assert values[:3] == pytest.approx([want] * 3, abs=ON_BOUND)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)  # z moved by 3e-7: its own slope only
    torch.testing.assert_close(grads[2], grads[1], rtol=1e-5, atol=1e-6)
    assert values[3] == pytest.approx(want, abs=1e-6)  # clamped onto the bound ...
    assert not torch.allclose(grads[3], grads[1])  # ... where the clamped id's gradient stops


def test_top_k_then_top_p_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    idx, p, _ = filter_top_k_top_p(logits, k=3, top_p=0.75)
    assert idx.tolist() == [[0, 1, 2]]
    torch.testing.assert_close(p, torch.tensor([[0.625, 0.375, 0.0]]))  # 0.5 + 0.3 reach 0.75: the third is dropped


def test_gumbel_noise_is_a_function_of_the_row_seed_and_clamped():
    a = gumbel_noise(torch.tensor([3, 5, 7]), step=2, width=5)
    b = gumbel_noise(torch.tensor([7, 3]), step=2, width=5)
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    assert not torch.equal(a, gumbel_noise(torch.tensor([3, 5, 7]), step=3, width=5))
    many = gumbel_noise(torch.arange(4000), 0, 8)
    assert many.min() >= -1.5 and many.max() <= 3.0
    # the mean of a Gumbel clamped to [-1.5, 3], from its density f(x) = exp(-x - exp(-x)) on a fine grid
    x = torch.linspace(-1.5, 3.0, 200001, dtype=torch.float64)
    f = torch.exp(-x - torch.exp(-x))
    F = lambda v: math.exp(-math.exp(-v))  # noqa: E731
    mean = torch.trapezoid(x * f, x).item() - 1.5 * F(-1.5) + 3.0 * (1 - F(3.0))
    assert abs(many.mean().item() - mean) < 4 * 1.3 / math.sqrt(many.numel())


def tiny(family="gpt2", seed=0):
    model, tok = build_tiny_model(family=family, n_layer=2, n_embd=32, n_head=2, seed=seed)
    return model.eval(), tok


def soft_config(tok, **keys):
    return ThinkingConfig().with_soft(tok, **keys)


def prompts_of(tok, n=3):
    return [encode_prompt(tok, ex.question, ThinkingConfig()) for ex in load_examples("arith", "test", n, 0, num_steps=2)]


def decode(model, tok, thinking, prompts, exploration, **kw):
    return thinking_mode(thinking.thinking_mode).generate(
        model, prompts, thinking, exploration=exploration, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        **{"max_new_tokens": 12, "temperature": 0.0, **kw})  # fmt: skip


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_soft_thinking_with_top_1_is_discrete_greedy_decoding(family):
    model, tok = tiny(family)
    prompts = prompts_of(tok)
    discrete = decode(model, tok, ThinkingConfig(), prompts, NoExploration())
    soft = decode(model, tok, soft_config(tok, soft_top_k=1), prompts, NoExploration())
    assert torch.equal(soft.completion_ids, discrete.completion_ids)
    assert torch.equal(soft.completion_mask, discrete.completion_mask)
    # the recomputation sees the same inputs, so every position's log-probs agree too
    a = completion_logps(model, discrete, NoExploration())
    b = thinking_mode("discrete").completion_logps(model, soft, NoExploration(), 1.0)  # the tokens' own log-probs
    torch.testing.assert_close(a.logps, b.logps, atol=1e-6, rtol=0)
    from latentrl.models.thinking.soft import soft_completion_logits

    mixed = soft_completion_logits(model, soft.prompt_ids, soft.prompt_mask, soft.completion_ids, soft.completion_mask, soft.soft)
    plain = torch.log_softmax(mixed.float(), -1).gather(-1, soft.completion_ids[..., None]).squeeze(-1)
    torch.testing.assert_close(plain * soft.completion_mask, a.logps * discrete.completion_mask, atol=1e-5, rtol=0)


def test_the_cached_soft_loop_equals_a_full_recompute():
    """Re-filtering the recomputed logits gives the recorded ids and, with the replayed Gumbel noise,
    the recorded perturbed logits: the KV-cached loop and the one-forward recompute agree."""
    model, tok = tiny()
    thinking = soft_config(tok)
    gen = decode(model, tok, thinking, prompts_of(tok), GumbelExploration(0.5), seeds=torch.arange(3) + 11)
    from latentrl.models.thinking.soft import soft_completion_logits

    logits = soft_completion_logits(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask, gen.soft)
    mask = gen.soft.soft_mask
    assert mask.any()
    for t in range(mask.shape[1]):
        rows = mask[:, t]
        if not rows.any():
            continue
        idx, p, _ = filter_top_k_top_p(logits[rows, t], 5, 0.95)
        assert torch.equal(idx, gen.soft.ids[rows, t])
        g, _ = GumbelExploration(0.5).soft_logits(p, gen.seeds[rows], t)
        recorded = gen.soft.noisy_logits[rows, t]
        finite = torch.isfinite(recorded)
        assert torch.equal(finite, torch.isfinite(g))
        torch.testing.assert_close(g[finite], recorded[finite], atol=1e-5, rtol=0)


def _early_ending_soft(noise, family="gpt2"):
    """``run(**engine)``: soft rollouts of a tiny model (4 prompts x 3, at most 16 positions) under which rows
    end at different steps (a frequent answer token is the eos)."""
    model, tok = tiny(family)
    thinking, mode = soft_config(tok, max_thinking_steps=4), thinking_mode("soft")
    common = dict(exploration=noise, pad_token_id=tok.pad_token_id, num_generations=3, max_new_tokens=16,
                  temperature=1.0, seeds=torch.arange(12) + 3)  # fmt: skip
    prompts = prompts_of(tok, 4)
    free = mode.generate(model, prompts, thinking, eos_token_id=-1, generator=torch.Generator().manual_seed(1), **common)
    eos = int(free.completion_ids[:, 5:].flatten().mode().values)
    return lambda **engine: mode.generate(model, prompts, thinking, eos_token_id=eos,
                                          generator=torch.Generator().manual_seed(1), **common, **engine)  # fmt: skip


@pytest.mark.parametrize("noise", [NoExploration(), GumbelExploration(0.5)])
def test_finished_soft_rows_leaving_the_batch_change_nothing(noise):
    """The soft loop drops finished rows (KV cache, mask, seeds, sampling keys, live state) like discrete
    decoding; every recorded field is the one of a batch that keeps its rows to the end."""
    rollouts = _early_ending_soft(noise)
    kept = rollouts(compact_at=0.0)
    lengths = kept.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 2 and lengths.lt(16).any() and kept.soft.soft_mask.any()
    for compact_at in (1e-9, 0.25):
        _same_soft_rollouts(rollouts(compact_at=compact_at), kept)


def test_replayed_gumbel_noise_gives_ratio_one_and_the_on_policy_gradient_identity():
    model, tok = tiny()
    thinking = soft_config(tok)
    gen = decode(model, tok, thinking, prompts_of(tok, 2), GumbelExploration(), num_generations=4, temperature=1.0,
                 seeds=torch.arange(8) + 5, generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad():
        old = completion_logps(model, gen, GumbelExploration()).logps
    new = completion_logps(model, gen, GumbelExploration()).logps
    mask = gen.completion_mask
    assert torch.equal((new.detach() - old) * mask, torch.zeros_like(old))  # ratio exactly 1
    advantages = torch.tensor([1.0, -0.5, 0.25, -0.75, 0.5, 0.5, -1.0, 0.0])
    loss, _ = policy_loss(new, old, advantages, mask, loss_type="dapo")
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    surrogate = -(advantages[:, None] * new * mask).sum() / mask.sum()  # -A grad log pi, the REINFORCE form
    want = torch.autograd.grad(surrogate, params, allow_unused=True)
    used = [(a, b) for a, b in zip(grads, want) if a is not None or b is not None]
    assert used and gen.soft.soft_mask.any()
    for a, b in used:
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_soft_steps_are_actions_only_with_noise():
    model, tok = tiny()
    thinking = soft_config(tok)
    mode = thinking_mode("soft")
    plain = decode(model, tok, thinking, prompts_of(tok), NoExploration())
    noisy = decode(model, tok, thinking, prompts_of(tok), GumbelExploration(), seeds=torch.arange(3))
    assert torch.equal(mode.loss_mask(plain, NoExploration()), plain.completion_mask * ~plain.soft.soft_mask)
    assert torch.equal(mode.loss_mask(noisy, GumbelExploration()), noisy.completion_mask)


class PhaseRecorder(NoExploration):
    def __init__(self):
        self.phases = []

    def set_phase(self, phase, step=0):
        self.phases.append(phase)


def test_discrete_mode_passes_the_answer_phase_to_the_noise():
    """Before: in discrete mode the decoding steps and the recomputed completion ran under "prefill"."""
    from latentrl.exploration import DropoutExploration

    model, tok = tiny()
    recorder = PhaseRecorder()
    gen = decode(model, tok, ThinkingConfig(), prompts_of(tok), recorder)
    assert recorder.phases[0] == "prefill" and set(recorder.phases[1:]) == {"answer"}
    masked_answer = DropoutExploration(p=0.5, sites=("mlp",), cover_answer=True)
    masked_prefill = DropoutExploration(p=0.5, sites=("mlp",), cover_prefill=True)
    clean = completion_logps(model, gen, NoExploration()).logps
    answer = completion_logps(model, gen, masked_answer).logps
    prefill = completion_logps(model, gen, masked_prefill).logps
    mask = gen.completion_mask.bool()
    assert not torch.allclose(answer[mask], clean[mask])  # cover_answer masks the completion
    assert not torch.allclose(prefill[mask], clean[mask])  # the prompt's masked states reach the completion ...
    later = decode(model, tok, ThinkingConfig(), prompts_of(tok), masked_prefill, seeds=torch.arange(3))
    early = decode(model, tok, ThinkingConfig(), prompts_of(tok), NoExploration())
    assert later.completion_ids.shape[0] == early.completion_ids.shape[0]  # ... and decoding still runs


@pytest.fixture(scope="module")
def cot_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("soft") / "cot"
    assert main(["sft", f"output_dir={out}", "n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=64",
                 "per_device_train_batch_size=32", "disable_tqdm=true", "task_kwargs={num_steps: 2}", "mode=cot",
                 "num_train_epochs=1", "save_steps=0"]) == 0  # fmt: skip
    return out / "final"


def test_sofT_grpo_through_the_cli(cot_checkpoint, tmp_path):
    import json

    out = tmp_path / "soft"
    assert main(["grpo", f"output_dir={out}", f"model_name_or_path={cot_checkpoint}", "thinking_mode=soft",
                 "exploration=gumbel", "num_generations=4", "generation_batch_size=8", "per_device_train_batch_size=8",
                 "max_completion_length=12", "task_kwargs={num_steps: 2}", "disable_tqdm=true", "max_steps=2",
                 "save_steps=0", "num_iterations=2"]) == 0  # fmt: skip
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert {"soft/thinking_steps", "soft/mixture_entropy", "soft/frac_not_top1", "latent/distinct_answers"} <= set(log[0])
    assert json.loads((out / "final" / "latentrl.json").read_text())["thinking_mode"] == "soft"
    ev = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(out / "final"), "--task", "arith", "--n", "4", "--out", str(ev),
                 "task_kwargs={num_steps: 2}"]) == 0  # fmt: skip
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["thinking_mode"] == "soft" and metrics["mean_thinking_steps"] > 0


@pytest.mark.parametrize(("extra", "message"), [
    (["soft_top_k=3"], "apply to soft thinking"),
    (["thinking_mode=soft", "soft_top_k=100000"], "larger than the vocabulary"),
    (["thinking_mode=soft", "end_of_thinking=</think>"], "not one token"),
    (["thinking_mode=soft", "exploration=gumbel", "gumbel_tau=0"], "gumbel_tau"),
    (["exploration=gumbel"], "exploration=gumbel"),
    (["thinking_mode=coconut"], "cannot run as thinking_mode='coconut'"),
])  # fmt: skip
def test_bad_soft_input_is_one_clear_error(cot_checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(cot_checkpoint), "--task", "arith", "--n", "2", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latentrl: error:") and message in err[0]
    assert not out.exists()


def test_soft_on_a_coconut_checkpoint_is_refused(tmp_path, capsys):
    out = tmp_path / "coconut"
    assert main(["sft", f"output_dir={out}", "n_layer=2", "n_embd=32", "n_head=2", "num_train_examples=32",
                 "per_device_train_batch_size=32", "disable_tqdm=true", "task_kwargs={num_steps: 2}", "mode=coconut",
                 "start_stage=1", "max_latent_stage=1", "num_train_epochs=1", "save_steps=0"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "final"), "--task", "arith", "--n", "2", "--out",
                 str(tmp_path / "e"), "thinking_mode=soft"]) == 2  # fmt: skip
    assert "needs a discrete" in capsys.readouterr().err


def test_the_ablation_noises_of_the_mixture():
    """soft_gaussian and dirichlet: weights on the simplex, dropped ids at 0, replayable, the right mean;
    their soft steps are no actions (the noise is exogenous)."""
    from latentrl.exploration import DirichletExploration, SoftGaussianExploration

    p = torch.tensor([[0.6, 0.3, 0.1, 0.0]]).repeat(4000, 1)
    seeds = torch.arange(4000)
    for source in (SoftGaussianExploration(0.05), DirichletExploration()):
        g, tau = source.soft_logits(p, seeds, step=3)
        y = torch.softmax(g / tau, -1)
        assert tau == 1.0 and torch.allclose(y.sum(-1), torch.ones(4000)) and (y[:, 3] == 0).all()
        assert torch.equal(g, source.soft_logits(p, seeds, step=3)[0])  # replayed bit for bit
        assert not torch.equal(g, source.soft_logits(p, seeds, step=4)[0])
        torch.testing.assert_close(y.mean(0)[:3], p[0, :3], atol=0.02, rtol=0)  # E[y] = p~ (Dirichlet exactly)
        assert source.stochastic is False
    g, _ = SoftGaussianExploration(0.0).soft_logits(p[:2], seeds[:2], 0)
    torch.testing.assert_close(torch.softmax(g, -1), p[:2])
    # Dirichlet(p~): Var(y_i) = p_i (1 - p_i) / (sum(p) + 1)
    y = torch.softmax(DirichletExploration().soft_logits(p, seeds, 0)[0], -1)
    torch.testing.assert_close(y.var(0)[:3], p[0, :3] * (1 - p[0, :3]) / 2, atol=0.01, rtol=0)


def test_soft_grpo_with_an_ablation_noise_trains_on_the_answer_tokens(cot_checkpoint, tmp_path):
    import json

    out = tmp_path / "dirichlet"
    assert main(["grpo", f"output_dir={out}", f"model_name_or_path={cot_checkpoint}", "thinking_mode=soft",
                 "exploration=dirichlet", "num_generations=4", "generation_batch_size=8", "per_device_train_batch_size=8",
                 "max_completion_length=12", "task_kwargs={num_steps: 2}", "disable_tqdm=true", "max_steps=1",
                 "save_steps=0"]) == 0  # fmt: skip
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert log["soft/thinking_steps"] > 0


def test_gumbel_noise_on_the_sampled_runs_only(cot_checkpoint, tmp_path):
    """``greedy_exploration=false``: the greedy run is plain soft thinking (predictions equal to a run without
    noise) while the sampled runs carry the Gumbel noise (their tokens differ from noise-free samples)."""
    import json

    def run(name, *keys):
        out = tmp_path / name
        assert main(["eval", "--checkpoint", str(cot_checkpoint), "--task", "arith", "--n", "6", "--out", str(out),
                     "task_kwargs={num_steps: 2}", "thinking_mode=soft", "samples=4", "progress=false", *keys]) == 0  # fmt: skip
        preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
        return [p["completion_ids"] for p in preds], json.loads((out / "metrics.json").read_text())

    plain, plain_m = run("plain")
    noisy, noisy_m = run("noisy", "exploration=gumbel", "greedy_exploration=false")
    always, _ = run("always", "exploration=gumbel")
    assert noisy == plain  # the greedy run saw no noise
    assert always != plain  # the check can fail: with the noise on, greedy soft thinking does change
    assert noisy_m["mean_sampled_tokens"] != plain_m["mean_sampled_tokens"] or noisy_m != plain_m


def _soft_rollouts(family, G=3, model_and_tokenizer=None, **keys):
    model, tok = model_and_tokenizer or tiny(family)
    thinking = soft_config(tok, **keys)
    gen = decode(model, tok, thinking, prompts_of(tok), GumbelExploration(0.5), num_generations=G, temperature=1.0,
                 seeds=torch.arange(3 * G) + 7, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert gen.soft.soft_mask.any() and (~gen.soft.soft_mask & gen.completion_mask.bool()).any()
    assert gen.soft.settings.logprob_clamp is not None  # the default clamp of z, which draws on its bounds meet
    return model, gen


def _logps_and_grads(model, gen, **kw):
    model.zero_grad()
    lp = completion_logps(model, gen, GumbelExploration(0.5), **kw)
    (lp.logps * gen.completion_mask).sum().backward()
    return lp, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize(("soft_temperature", "soft_top_p"), [(1.0, 0.95), (0.7, 0.95), (1.0, 0.015)])
def test_the_soft_recomputation_with_a_shared_prefill_and_the_chunked_head_equals_the_definition(
        family, soft_temperature, soft_top_p):  # fmt: skip
    """SofT-GRPO's recomputation (the rows of a prompt share its prefill; the head runs in vocabulary chunks over
    the answer token and the kept ids of each position, in one pass or, when the soft temperature differs from the
    sampling one, two) against the definition written out from the model's logits of a per-row forward:
    ``log_softmax`` at the answer tokens and ``soft_token_logprob`` at the soft steps; values and gradients (finite,
    also where top-p dropped kept ids: the tiny models are near uniform, so a top-p of 0.015 keeps 1 or 2 of 5)."""
    from latentrl.models.thinking.soft import soft_completion_logits

    model, gen = _soft_rollouts(family, soft_temperature=soft_temperature, soft_top_p=soft_top_p)
    dropped = gen.soft.soft_mask[..., None] & torch.isinf(gen.soft.noisy_logits)
    assert bool(dropped.any()) == (soft_top_p < 0.5)
    ours, grads = _logps_and_grads(model, gen, temperature=1.0)
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())
    model.zero_grad()
    s, (B, T) = gen.soft, gen.completion_ids.shape
    logits = soft_completion_logits(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask, s)
    answer = torch.log_softmax(logits, -1).gather(-1, gen.completion_ids[..., None]).squeeze(-1)
    noisy = s.noisy_logits.masked_fill(~s.soft_mask[..., None], float("-inf")).reshape(B * T, -1)
    steps = soft_token_logprob(logits.reshape(B * T, -1), s.ids.reshape(B * T, -1), noisy, soft_temperature)
    steps = steps.view(B, T)
    want = torch.where(s.soft_mask, steps, answer)
    (want * gen.completion_mask).sum().backward()
    torch.testing.assert_close(ours.logps, want.detach(), atol=1e-5, rtol=1e-4)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("layer", [None, 1])
def test_the_soft_recomputation_through_the_chunked_head_equals_the_models_logits(layer):
    """On a plain head the soft recomputation stops at the hidden states: log-probs, entropies and gradients
    equal those read from the model's own logits (``plain_head`` off), for the full policy and BuPO's layer 1."""
    from latentrl.models.readout import PolicyHead, plain_head

    model, gen = _soft_rollouts("gpt2")
    assert plain_head(model)
    results = []
    for chunked in (True, False):
        model._latentrl_plain_head = chunked
        results.append(_logps_and_grads(model, gen, temperature=1.0, head=PolicyHead() if layer is None else PolicyHead(layer)))
    assert_same_logps_and_grads(*results)


def test_soft_rollouts_run_each_prompts_prefill_once(monkeypatch):
    """The soft loop's prefill and the recomputation's run over the distinct prompts (3 rows at the first block
    where the batch has 9), and the rollouts are the ones of a per-row prefill."""
    from latentrl.exploration.dropout import decoder_blocks
    from latentrl.models import latent

    model, tok = tiny()
    batches = []
    decoder_blocks(model)[0].register_forward_pre_hook(
        lambda m, a, kw: batches.append((a[0] if a else kw["hidden_states"]).shape[:2]), with_kwargs=True)
    _, shared = _soft_rollouts("gpt2", model_and_tokenizer=(model, tok))
    prefill_rows = batches[0][0]
    completion_logps(model, shared, GumbelExploration(0.5))
    assert prefill_rows == 3 and batches[-2][0] == 3 and batches[-1][0] == 9, batches
    monkeypatch.setattr(latent, "SHARE_AT_LEAST", 2.0)  # above 1: never shared
    batches.clear()
    _, per_row = _soft_rollouts("gpt2", model_and_tokenizer=(model, tok))
    assert batches[0][0] == 9
    for field in ("completion_ids", "completion_mask"):
        assert torch.equal(getattr(shared, field), getattr(per_row, field)), field
    for field in ("soft_mask", "ids"):
        assert torch.equal(getattr(shared.soft, field), getattr(per_row.soft, field)), field
    torch.testing.assert_close(shared.soft.noisy_logits, per_row.soft.noisy_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.sample_logps, per_row.sample_logps, atol=1e-5, rtol=0)


def _same_soft_rollouts(a, b):
    for field in ("completion_ids", "completion_mask", "truncated"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    for field in ("soft_mask", "ids", "differs_from_top1", "forced"):
        assert torch.equal(getattr(a.soft, field), getattr(b.soft, field)), field
    for x, y in ((a.sample_logps, b.sample_logps), (a.soft.noisy_logits, b.soft.noisy_logits), (a.soft.entropy, b.soft.entropy)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("noise", [NoExploration(), GumbelExploration(0.5)])
def test_soft_thinking_with_a_static_cache_generates_what_the_dynamic_one_does(family, noise, monkeypatch):
    """The soft loop on a preallocated cache with a full-width mask (rows stay in the batch) against the
    dynamic cache (rows that end early leave it): the same soft steps, tokens and records."""
    from latentrl.models import latent

    rollouts = _early_ending_soft(noise, family)
    static_caches = []
    real = latent.static_cache
    monkeypatch.setattr(latent, "static_cache", lambda *a: static_caches.append(a[1:]) or real(*a))
    dynamic = rollouts()
    assert not static_caches and dynamic.completion_mask.sum(1).lt(16).sum() >= 3  # rows left the dynamic batch
    static = rollouts(cache_implementation="static")
    assert static_caches == [(12, 64)]  # 12 rows, prompt + 16 positions rounded up to STATIC_BUCKET
    assert dynamic.soft.soft_mask.any()
    _same_soft_rollouts(static, dynamic)


def test_a_compiled_soft_decoding_step_generates_what_the_eager_one_does(monkeypatch):
    """``torch_compile`` reaches the soft loop's steps (mixture inputs; ``eager`` backend here) and changes nothing."""
    from latentrl.models import latent

    calls = []
    real = torch.compile
    monkeypatch.setattr(latent.torch, "compile", lambda fn, **kw: calls.append(kw) or real(fn, backend="eager", **kw))
    model, tok = tiny()
    thinking = soft_config(tok, max_thinking_steps=4)
    common = dict(num_generations=2, temperature=1.0, seeds=torch.arange(6) + 3, max_new_tokens=10, cache_implementation="static")
    eager = decode(model, tok, thinking, prompts_of(tok), GumbelExploration(0.5), generator=torch.Generator().manual_seed(2), **common)
    compiled = decode(model, tok, thinking, prompts_of(tok), GumbelExploration(0.5), torch_compile=True,
                      generator=torch.Generator().manual_seed(2), **common)  # fmt: skip
    _same_soft_rollouts(compiled, eager)
    assert len(calls) == 1 and calls[0]["dynamic"] is False
