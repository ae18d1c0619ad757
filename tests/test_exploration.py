"""Exploration sources: the seeded hash, dropout masks (scopes, sites, phases), replay, hooks, factory."""

import functools
import math

import pytest
import torch

from latentrl.exploration import (
    DropoutExploration,
    GaussianExploration,
    NoExploration,
    make_exploration,
)
from latentrl.exploration.dropout import dropout_mask, hash_uniform, splitmix64
from latentrl.exploration.gaussian import hash_normal
from latentrl.models import ThinkingConfig, build_tiny_model, encode_prompt, generate, latent_forward
from latentrl.models.latent import left_pad

FAMILIES = ["gpt2", "llama"]
MODULE_SITES = ["mlp", "attn", "block"]
QUESTIONS = ["4+7*3-2", "1+2*3-4", "9+9*9-9", "5+5*5-5"]  # same length: no padding differences


@functools.cache
def tiny(family):
    """A tiny model shared by the tests (none of them changes it)."""
    model, tok = build_tiny_model(family, n_layer=2, n_embd=32, n_head=2, max_length=64)
    return model.eval(), tok


def batch(tok, questions, num_latents=3):
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=num_latents)
    ids, mask = left_pad([encode_prompt(tok, q, cfg) for q in questions], tok.pad_token_id)
    return ids, mask, ids == cfg.latent_token_id


@torch.no_grad()
def run(model, tok, exploration, seeds, questions=None):
    """Logits ``[B, L, V]`` of ``latent_forward`` over the prompts, inside one session."""
    seeds = torch.as_tensor(seeds)
    ids, mask, latent = batch(tok, questions or [QUESTIONS[0]] * len(seeds))
    with exploration.session(model, seeds):
        return latent_forward(model, ids, mask, latent, exploration).logits


# ---------------------------------------------------------------- the hash


def splitmix64_reference(x: int) -> int:
    """splitmix64 in plain Python integers (Steele et al.), the definition."""
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_splitmix64_matches_the_reference_bits():
    xs = [0, 1, 2, 12345, -1, -(1 << 63), (1 << 63) - 1, 0x0123456789ABCDEF]
    got = splitmix64(torch.tensor(xs, dtype=torch.long)).tolist()
    want = [splitmix64_reference(x & ((1 << 64) - 1)) for x in xs]
    assert [g & ((1 << 64) - 1) for g in got] == want
    assert want[0] == 0xE220A8397B1DCDAF  # the first output of splitmix64 seeded with 0


def test_hash_uniform_is_uniform_and_decorrelated():
    W = 4096
    u = hash_uniform(torch.arange(256), site=1, layer=0, step=0, width=W).double()  # [256, W]
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.002  # sd of the mean: 0.29 / sqrt(1M) = 3e-4
    assert abs(u.var().item() - 1 / 12) < 0.002
    z = (u - 0.5) / u.std()
    adjacent_seeds = (z[1:] * z[:-1]).mean(1)  # [255] correlation of seeds s and s+1
    adjacent_units = (z[:, 1:] * z[:, :-1]).mean()
    assert adjacent_seeds.abs().max() < 5 / math.sqrt(W)
    assert adjacent_units.abs() < 5 / math.sqrt(z.numel())
    # each of the 24 bits is fair
    bits = (u * 2**24).long()[..., None] >> torch.arange(24) & 1  # [256, W, 24]
    assert (bits.double().mean((0, 1)) - 0.5).abs().max() < 0.005


def test_hash_streams_differ_by_site_layer_step():
    seeds = torch.arange(8)
    base = hash_uniform(seeds, 0, 0, 0, 64)
    for other in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, -1)]:
        assert (hash_uniform(seeds, *other, 64) != base).float().mean() > 0.99


def test_mask_of_a_row_depends_only_on_its_seed():
    seeds = torch.tensor([7, 123, -5, 2**40, 0])
    full = dropout_mask(seeds, 0.3, 1, 2, 0, 100)  # [5, 100]
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.equal(dropout_mask(seeds[perm], 0.3, 1, 2, 0, 100), full[perm])
    assert torch.equal(dropout_mask(seeds[2:3], 0.3, 1, 2, 0, 100), full[2:3])


# ---------------------------------------------------------------- the thought site


def thought_under(exploration, seeds, h, step):
    with exploration.session(torch.nn.Identity(), torch.as_tensor(seeds)):
        exploration.set_phase("latent", step)
        return exploration.thought(h, step)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_keep_fraction_and_inverted_scale(p):
    h = torch.randn(64, 512).abs() + 0.1  # [B, D], nonzero
    out = thought_under(DropoutExploration(p=p), torch.arange(64), h, 0)
    ratio = out / h
    kept = ratio != 0
    torch.testing.assert_close(ratio[kept], torch.full_like(ratio[kept], 1 / (1 - p)))
    n = h.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 4 * math.sqrt(p * (1 - p) / n)


def test_rollout_scope_holds_the_mask_step_scope_redraws_it():
    h = torch.ones(8, 256)
    rollout = [thought_under(DropoutExploration(p=0.3, scope="rollout"), range(8), h, s) for s in range(3)]
    step = [thought_under(DropoutExploration(p=0.3, scope="step"), range(8), h, s) for s in range(3)]
    assert torch.equal(rollout[0], rollout[1]) and torch.equal(rollout[0], rollout[2])
    assert not torch.equal(step[0], step[1]) and not torch.equal(step[1], step[2])


def test_thought_outside_the_latent_phase_is_untouched():
    ex, h = DropoutExploration(p=0.5), torch.ones(4, 16)
    with ex.session(torch.nn.Identity(), torch.arange(4)):
        ex.set_phase("answer")
        assert torch.equal(ex.thought(h, 0), h)


# ---------------------------------------------------------------- replay through the latent forward


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sites", [("thought",), ("mlp", "attn", "block")])
def test_replay_is_bit_exact_and_seeds_matter(family, sites):
    model, tok = tiny(family)
    ex = DropoutExploration(p=0.3, sites=sites, cover_prefill=True, cover_answer=True)
    first = run(model, tok, ex, [11, 12, 13])
    assert torch.equal(first, run(model, tok, ex, [11, 12, 13]))
    assert not torch.allclose(first[0], first[1])  # same prompt, different seeds


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_does_not_depend_on_the_other_rows(family):
    """A row's masks are bit-identical in any batch; its logits match to float round-off (CPU BLAS
    kernels are not bit-invariant to a row's batch position, with or without exploration)."""
    model, tok = tiny(family)
    ex = DropoutExploration(p=0.3, sites=("thought", "mlp", "attn", "block"), cover_prefill=True, cover_answer=True)
    a = run(model, tok, ex, [5, 6, 7, 8], QUESTIONS)
    b = run(model, tok, ex, [8, 9, 5, 1], [QUESTIONS[3], QUESTIONS[1], QUESTIONS[0], QUESTIONS[2]])
    alone = run(model, tok, ex, [5], QUESTIONS[:1])
    torch.testing.assert_close(a[0], b[2], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a[0], alone[0], atol=1e-6, rtol=1e-5)
    other = run(model, tok, ex, [6], QUESTIONS[:1])
    assert (other[0] - a[0]).abs().max() > 1e-3
    h, thought_only = torch.ones(4, 32), DropoutExploration(p=0.3)
    assert torch.equal(thought_under(thought_only, [5, 6, 7, 8], h, 0)[0], thought_under(thought_only, [8, 9, 5], h[:3], 0)[2])


@pytest.mark.parametrize("family", FAMILIES)
def test_p0_equals_no_exploration(family):
    model, tok = tiny(family)
    ex = DropoutExploration(p=0.0, sites=("thought", "mlp", "attn", "block"), cover_prefill=True, cover_answer=True)
    assert torch.equal(run(model, tok, ex, [1, 2]), run(model, tok, NoExploration(), [1, 2]))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", ["thought", *MODULE_SITES])
def test_each_site_changes_the_output_but_not_uncovered_prefill(family, site):
    model, tok = tiny(family)
    clean = run(model, tok, NoExploration(), [3])
    noisy = run(model, tok, DropoutExploration(p=0.3, sites=(site,)), [3])
    _, _, latent = batch(tok, QUESTIONS[:1])
    first = int(latent[0].nonzero()[0])  # prefill covers columns [0, first)
    assert torch.equal(noisy[:, :first], clean[:, :first])
    assert (noisy[:, first:] - clean[:, first:]).abs().max() > 1e-4
    if site != "thought":
        covered = run(model, tok, DropoutExploration(p=0.3, sites=(site,), cover_prefill=True), [3])
        assert (covered[:, :first] - clean[:, :first]).abs().max() > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("phase", ["prefill", "answer"])
def test_module_hooks_act_only_in_covered_phases(family, phase):
    model, tok = tiny(family)
    ids = torch.tensor([tok("12+34").input_ids] * 2)
    with torch.no_grad():
        clean = model(ids).logits
        for cover in (False, True):
            flags = {"cover_prefill": cover and phase == "prefill", "cover_answer": cover and phase == "answer"}
            ex = DropoutExploration(p=0.3, sites=MODULE_SITES, **flags)
            with ex.session(model, torch.tensor([1, 2])):
                assert torch.equal(model(ids).logits, clean)  # before any set_phase: pass through
                ex.set_phase(phase)
                out = model(ids).logits
                ex.set_phase("latent", 0)
                latent = model(ids).logits
            assert torch.equal(out, clean) != cover
            assert not torch.allclose(latent, clean)  # the latent phase is always covered


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_are_removed_after_the_session_even_on_error(family):
    model, tok = tiny(family)
    ids = torch.tensor([tok("12+34").input_ids])
    with torch.no_grad():
        clean = model(ids).logits
    hooks = lambda: [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]  # noqa: E731
    before = hooks()  # transformers installs output-capturing hooks of its own
    ex = DropoutExploration(p=0.5, sites=MODULE_SITES)
    with pytest.raises(RuntimeError, match="boom"), ex.session(model, torch.tensor([0])):
        ex.set_phase("latent", 0)
        raise RuntimeError("boom")
    with ex.session(model, torch.tensor([0])):
        pass
    assert hooks() == before
    with torch.no_grad():
        assert torch.equal(model(ids).logits, clean)


def test_step_scope_module_masks_differ_across_steps():
    model, tok = tiny("gpt2")
    ids = torch.tensor([tok("12+34").input_ids])
    ex = DropoutExploration(p=0.3, sites=("mlp",), scope="step")
    outs = []
    with torch.no_grad(), ex.session(model, torch.tensor([9])):
        for step in (0, 1, 0):
            ex.set_phase("latent", step)
            outs.append(model(ids).logits)
    assert torch.equal(outs[0], outs[2]) and not torch.allclose(outs[0], outs[1])
    assert ex.mask_stats()["dropout/num_masks"] == 2 * 2  # 2 steps x 2 layers


def test_mask_stats_report_the_keep_fraction():
    model, tok = tiny("llama")
    ex = DropoutExploration(p=0.2, sites=("thought", "mlp"))
    run(model, tok, ex, list(range(16)))
    stats = ex.mask_stats()
    assert stats["dropout/num_masks"] == 1 + 2  # one thought mask (rollout scope) + one per layer
    assert abs(stats["dropout/keep_frac"] - 0.8) < 0.05


def test_unsupported_model_names_its_class():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Sequential(torch.nn.Linear(4, 4))

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList([Block()])

    for site in ("attn", "mlp"):
        with pytest.raises(ValueError, match="Toy"):
            with DropoutExploration(sites=(site,)).session(Toy(), torch.tensor([0])):
                pass
    with pytest.raises(ValueError, match="Identity"):
        with DropoutExploration(sites=("block",)).session(torch.nn.Identity(), torch.tensor([0])):
            pass


def test_gradient_checkpointing_is_refused_for_inner_sites():
    model, _ = build_tiny_model("llama", n_layer=2, n_embd=32, n_head=2, max_length=64)
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()  # transformers 5 name first
    with pytest.raises(ValueError, match="checkpointing"):
        with DropoutExploration(sites=("mlp",)).session(model, torch.tensor([0])):
            pass


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_thoughts_replay_in_the_recomputation(family):
    """Common random numbers: the rollout's thoughts are recomputed under the same seeds."""
    model, tok = tiny(family)
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=3)
    prompt = encode_prompt(tok, QUESTIONS[0], cfg)
    ex = DropoutExploration(p=0.3, sites=("thought", "mlp"))
    seeds = torch.tensor([21, 22, 23, 24])
    kwargs = dict(latent_token_id=cfg.latent_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    gen = generate(model, [prompt], num_generations=4, max_new_tokens=5, exploration=ex, seeds=seeds, **kwargs)
    again = generate(model, [prompt], num_generations=4, max_new_tokens=5, exploration=ex, seeds=seeds, **kwargs)
    assert torch.equal(gen.thoughts, again.thoughts) and torch.equal(gen.completion_ids, again.completion_ids)
    assert not torch.allclose(gen.thoughts[0], gen.thoughts[1])
    ids = torch.cat([gen.prompt_ids, gen.completion_ids], 1)
    mask = torch.cat([gen.prompt_mask, gen.completion_mask], 1)
    latent = torch.cat([gen.latent_mask, torch.zeros_like(gen.completion_mask, dtype=torch.bool)], 1)
    with torch.no_grad(), ex.session(model, seeds):
        recomputed = latent_forward(model, ids, mask, latent, ex)
    torch.testing.assert_close(recomputed.thoughts, gen.thoughts, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- gaussian and the factory


def test_hash_normal_is_standard_normal():
    eps = hash_normal(torch.arange(64), 0, 0, 4096).double()
    assert abs(eps.mean().item()) < 0.01 and abs(eps.std().item() - 1) < 0.01
    assert abs((eps**4).mean().item() - 3) < 0.1  # Gaussian kurtosis


@pytest.mark.parametrize("family", FAMILIES)
def test_gaussian_replays_and_sigma0_is_clean(family):
    model, tok = tiny(family)
    ex = GaussianExploration(sigma=0.5)
    first = run(model, tok, ex, [1, 2])
    assert torch.equal(first, run(model, tok, ex, [1, 2]))
    assert not torch.allclose(first[0], first[1])
    assert torch.equal(run(model, tok, GaussianExploration(sigma=0.0), [1, 2]), run(model, tok, NoExploration(), [1, 2]))
    h = torch.zeros(2, 32)
    noise = [thought_under(GaussianExploration(sigma=1.0), [1, 2], h, s) for s in (0, 1)]
    assert torch.equal(noise[0], noise[1])  # rollout scope: one noise vector per row


def test_make_exploration():
    assert isinstance(make_exploration("none"), NoExploration)
    ex = make_exploration("dropout", p=0.2, scope="step", sites=["mlp", "thought"], cover_prefill=True)
    assert isinstance(ex, DropoutExploration) and ex.sites == ("mlp", "thought") and ex.scope == "step"
    assert make_exploration("gaussian", sigma=0.3).sigma == 0.3
    with pytest.raises(ValueError, match="dropout.*gaussian.*none"):
        make_exploration("gumbelish")
    for bad in [dict(p=1.0), dict(scope="epoch"), dict(sites=("ffn",)), dict(sites=())]:
        with pytest.raises(ValueError):
            make_exploration("dropout", **bad)
