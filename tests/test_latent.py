"""Equivalences of the latent forward and generation against the naive definition."""

import pytest
import torch
from equivalence import assert_same_logps_and_grads

from latentrl.models import (
    ThinkingConfig,
    build_tiny_model,
    check_latent_support,
    collate,
    encode_example,
    encode_prompt,
    generate,
    latent_forward,
    naive_generate,
)
from latentrl.models.build import IncompatibleModelError

QUESTIONS = ["4+7*3-2", "1+1", "9*9*9-5+3", "0-3"]
STEPS = [["4+7=1", "1*3=3", "3-2=1"], ["1+1=2"], ["9*9=1", "1*9=9", "9-5=4", "4+3=7"], ["0-3=7"]]
ANSWERS = ["1", "2", "7", "7"]


def tiny(family, seed=0):
    model, tok = build_tiny_model(family, n_layer=2, n_embd=32, n_head=2, max_length=128, seed=seed)
    return model.eval(), tok


def naive_forward(model, ids, latent_id):
    """Per-row, cache-free: each thought recomputed from the whole prefix; returns logits [L, V]."""
    embed = model.get_input_embeddings()
    seq = [embed.weight[t] for t in ids]
    for t, tok in enumerate(ids):
        if tok == latent_id:
            seq[t] = model(inputs_embeds=torch.stack(seq[:t])[None], output_hidden_states=True).hidden_states[-1][0, -1]
    return model(inputs_embeds=torch.stack(seq)[None]).logits[0]


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_batched_latent_forward_matches_naive_per_row(family):
    model, tok = tiny(family)
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut", thoughts_per_step=2)
    # rows at different curriculum stages: latents at different columns and counts
    enc = [encode_example(tok, q, s, a, cfg, min(st, len(s)), 2 * min(st, len(s))) for q, s, a, st in zip(QUESTIONS, STEPS, ANSWERS, [1, 0, 3, 1])]
    batch = collate(enc, tok.pad_token_id, cfg.latent_token_id)
    with torch.no_grad():
        out = latent_forward(model, batch.input_ids, batch.attention_mask, batch.latent_mask)
    for b, e in enumerate(enc):
        cols = batch.attention_mask[b].bool()
        ref = naive_forward(model, e.ids, cfg.latent_token_id)
        torch.testing.assert_close(out.logits[b, cols], ref, atol=1e-5, rtol=1e-4)


def test_zero_thoughts_equals_plain_model():
    model, tok = tiny("gpt2")
    cfg = ThinkingConfig.from_tokenizer(tok, "discrete")
    enc = [encode_example(tok, q, s, a, cfg) for q, s, a in zip(QUESTIONS, STEPS, ANSWERS)]
    batch = collate(enc, tok.pad_token_id, cfg.latent_token_id)
    with torch.no_grad():
        ours = latent_forward(model, batch.input_ids, batch.attention_mask, batch.latent_mask).logits
    for b, e in enumerate(enc):
        plain = model(input_ids=torch.tensor([e.ids])).logits[0]
        torch.testing.assert_close(ours[b, batch.attention_mask[b].bool()], plain, atol=1e-5, rtol=1e-4)


class ProbeThoughts:
    """An exploration source that adds a zero offset to each thought, to take gradients there."""

    def __init__(self, k, d):
        self.offsets = torch.zeros(k, d, requires_grad=True)

    def session(self, model, seeds):
        from contextlib import nullcontext

        return nullcontext()

    def set_phase(self, phase, step=0):
        pass

    def thought(self, h, step):
        return h + self.offsets[step]


def test_gradient_flows_through_every_thought():
    model, tok = tiny("gpt2")
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut")
    enc = [encode_example(tok, QUESTIONS[2], STEPS[2], ANSWERS[2], cfg, 3, 3)]
    batch = collate(enc, tok.pad_token_id, cfg.latent_token_id)
    probe = ProbeThoughts(3, 32)
    out = latent_forward(model, batch.input_ids, batch.attention_mask, batch.latent_mask, probe)
    out.logits[0, -1].sum().backward()
    assert out.thoughts.shape[1] == 3
    assert bool((probe.offsets.grad.norm(dim=-1) > 0).all())  # every thought reaches the loss


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cached_batched_generation_matches_naive(family):
    model, tok = tiny(family, seed=3)
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=3)
    prompts = [encode_prompt(tok, q, cfg) for q in QUESTIONS]
    gen = generate(
        model, prompts, latent_token_id=cfg.latent_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, num_generations=2, max_new_tokens=12,
    )  # fmt: skip
    for b in range(len(prompts) * 2):
        ref = naive_generate(
            model, prompts[b // 2], latent_token_id=cfg.latent_token_id, eos_token_id=tok.eos_token_id, max_new_tokens=12
        )
        ours = gen.completion_ids[b][gen.completion_mask[b].bool()].tolist()
        assert ours == ref


def test_model_without_inputs_embeds_is_rejected():
    class NoEmbeds(torch.nn.Module):
        def get_input_embeddings(self):
            return None

    with pytest.raises(IncompatibleModelError, match="input embedding"):
        check_latent_support(NoEmbeds())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("exploring", [False, True])
def test_logits_from_keeps_only_the_positions_asked_for(family, exploring):
    """``logits_from=k`` gives exactly the full forward's logits of positions k.. (with latent columns, with
    and without an exploration source splitting the forward), and the LM head never sees the rest."""
    from latentrl.exploration import make_exploration

    model, tok = tiny(family)
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut", thoughts_per_step=2)
    enc = [encode_example(tok, q, s, a, cfg, min(st, len(s)), 2 * min(st, len(s))) for q, s, a, st in zip(QUESTIONS, STEPS, ANSWERS, [1, 0, 3, 1])]
    batch = collate(enc, tok.pad_token_id, cfg.latent_token_id)
    L = batch.input_ids.shape[1]
    no_latent = torch.zeros_like(batch.latent_mask)
    seeds = torch.arange(len(enc))
    for latent in (batch.latent_mask, no_latent):
        for start in (0, 3, L - 5, L - 1):
            outs = []
            for logits_from in (0, start):
                exploration = make_exploration("dropout", p=0.3) if exploring else None
                rows = []
                hook = model.get_output_embeddings().register_forward_hook(lambda m, a, o: rows.append(a[0].shape[1]))
                with torch.no_grad(), (exploration.session(model, seeds) if exploring else torch.enable_grad()):
                    outs.append(latent_forward(model, batch.input_ids, batch.attention_mask, latent, exploration,
                                               prompt_len=6, logits_from=logits_from).logits)  # fmt: skip
                hook.remove()
                # the LM head ran on the positions asked for, plus at most one per segment that needed none
                assert L - logits_from <= sum(rows) <= L - logits_from + len(rows) - 1
            assert outs[1].shape[1] == L - start
            torch.testing.assert_close(outs[1], outs[0][:, start:], atol=1e-6, rtol=1e-5)


def test_selective_token_logps_against_log_softmax():
    from latentrl.models.thinking.logprobs import chunked_entropy, token_logps

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 4).requires_grad_()
    ids = torch.randint(0, 11, (3, 5), generator=g)
    for temperature in (1.0, 0.6, 0.0):
        logps, entropy = token_logps(logits, ids, temperature)
        ref = torch.log_softmax(logits / (temperature or 1.0), -1)
        torch.testing.assert_close(logps.double(), ref.gather(-1, ids[..., None]).squeeze(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(entropy.double(), -(ref.exp() * ref).sum(-1), atol=1e-5, rtol=0)
        assert not entropy.requires_grad
        grad, = torch.autograd.grad(logps.sum(), logits)
        ref_grad, = torch.autograd.grad(ref.gather(-1, ids[..., None]).sum(), logits)
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=0)
    x = logits.detach().float()
    lse = torch.logsumexp(x, -1)
    torch.testing.assert_close(chunked_entropy(x, lse, chunk_elements=22), chunked_entropy(x, lse))  # 2 rows a chunk


def test_the_chunked_head_against_log_softmax_of_the_full_logits():
    """``head_token_logps(h, W, ids)`` (logits a vocabulary chunk at a time, recomputed in the backward) against
    ``log_softmax(h W^T / T)`` in float64: log-probs, entropies, and the gradients of h and W, with banned ids
    (their logit a constant) and with 1 and with 4 chunks; one id per position, and several (a soft step's kept
    ids with the answer token, which may repeat one of them)."""
    from latentrl.models.thinking.logprobs import head_token_logps

    g = torch.Generator().manual_seed(0)
    h = (torch.randn(3, 5, 8, generator=g, dtype=torch.float64) * 2).requires_grad_()
    W = torch.randn(1000, 8, generator=g, dtype=torch.float64).requires_grad_()
    one = torch.randint(0, 1000, (3, 5), generator=g)
    one[0, 0], banned = 7, (7, 400, 999)  # one target banned: its log-prob is that of the constant
    several = torch.randint(0, 1000, (3, 5, 4), generator=g)
    several[0, 0, 1], several[1, 2, 3], several[2, 4, :2] = 7, 256, 300  # banned, a chunk's first column, a repeat
    for ids, temperature, chunk_elements in ((one, 1.0, 1 << 22), (one, 0.6, 15 * 256), (one, 0.0, 1),
                                             (several, 1.0, 1 << 22), (several, 0.6, 15 * 256)):  # fmt: skip
        weights = torch.randn(ids.shape, generator=g, dtype=torch.float64)
        logits = (h @ W.T).index_fill(-1, torch.tensor(banned), -1e4) / (temperature or 1.0)
        ref = torch.log_softmax(logits, -1)
        ref_logps = ref.gather(-1, ids.view(3, 5, -1)).view(ids.shape)
        ref_grads = torch.autograd.grad((ref_logps * weights).sum(), (h, W))
        logps, entropy = head_token_logps(h, W, ids, temperature, banned, chunk_elements=chunk_elements)
        assert logps.shape == ids.shape
        torch.testing.assert_close(logps.double(), ref_logps, atol=1e-4, rtol=1e-6)
        torch.testing.assert_close(entropy.double(), -(ref.exp() * ref).sum(-1), atol=1e-5, rtol=0)
        assert not entropy.requires_grad
        for ours, want in zip(torch.autograd.grad((logps * weights).sum(), (h, W)), ref_grads):
            torch.testing.assert_close(ours.double(), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["discrete", "coconut"])
@pytest.mark.parametrize("layer", [None, 1])
def test_recomputed_logps_through_the_chunked_head_equal_the_models_logits(family, mode, layer):
    """The recomputation on a plain head (the forward stops at the hidden states, the head runs in chunks) gives
    what it gives through the model's own logits (``plain_head`` off): log-probs, entropies and gradients, under
    dropout on the MLP sites, for the full policy and for BuPO's layer-1 policy."""
    from latentrl.exploration import make_exploration
    from latentrl.models.readout import PolicyHead, plain_head
    from latentrl.rollout import completion_logps

    model, tok = tiny(family)
    cfg = ThinkingConfig.from_tokenizer(tok, mode, num_latents=2)
    prompts = [encode_prompt(tok, q, cfg) for q in QUESTIONS[:3]]
    gen = generate(model, prompts, latent_token_id=cfg.latent_token_id, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id, num_generations=2, max_new_tokens=8, temperature=1.0)  # fmt: skip
    head = PolicyHead() if layer is None else PolicyHead(layer)
    assert plain_head(model)
    results = []
    for chunked in (True, False):
        model._latentrl_plain_head = chunked
        model.zero_grad()
        exploration = make_exploration("dropout", p=0.3, sites=("mlp", "thought"), cover_answer=True)
        lp = completion_logps(model, gen, exploration, temperature=0.8, head=head)
        (lp.logps * gen.completion_mask).sum().backward()
        results.append((lp, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    assert_same_logps_and_grads(*results)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_chunked_head_on_tied_embeddings_and_in_bf16(dtype):
    """A GPT-2 whose head is its input embedding (tied, as SmolLM2's), in float32 and in bfloat16: the chunked
    head's log-probs (all <= 0), entropies and the tied weight's gradient against the model's own logits, within
    the dtype's rounding."""
    from latentrl.exploration import NoExploration
    from latentrl.rollout import completion_logps

    model, tok = build_tiny_model("gpt2", n_layer=2, n_embd=32, n_head=2, max_length=128, seed=1, thought_scale_init=False)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model = model.to(dtype).eval()
    gen = generate(model, [encode_prompt(tok, q, ThinkingConfig()) for q in QUESTIONS], latent_token_id=None,
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, num_generations=2, max_new_tokens=8,
                   temperature=1.0)  # fmt: skip
    results = []
    for chunked in (True, False):
        model._latentrl_plain_head = chunked
        model.zero_grad()
        lp = completion_logps(model, gen, NoExploration(), temperature=1.0)
        (lp.logps * gen.completion_mask).sum().backward()
        results.append((lp, model.get_input_embeddings().weight.grad.float().clone()))
    (ours, grad), (ref, ref_grad) = results
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.1, rtol=0.05)
    assert bool((ours.logps <= 0).all())
    torch.testing.assert_close(ours.logps.float(), ref.logps.float(), **tol)
    torch.testing.assert_close(ours.entropy.float(), ref.entropy.float(), **tol)
    assert (grad - ref_grad).norm() <= (1e-5 if dtype == torch.float32 else 0.05) * ref_grad.norm()


def test_a_head_that_is_not_plain_is_read_through_the_models_logits():
    """A config key that processes the logits, or a hook that rescales the LM head's output, makes ``plain_head``
    False, and the recomputation then reads the model's logits: log-probs under the rescaled head."""
    from latentrl.exploration import NoExploration
    from latentrl.models.readout import plain_head
    from latentrl.rollout import completion_logps

    model, tok = tiny("gpt2")
    gen = generate(model, [encode_prompt(tok, q, ThinkingConfig()) for q in QUESTIONS[:2]], latent_token_id=None,
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_new_tokens=6)  # fmt: skip
    with torch.no_grad():
        plain = completion_logps(model, gen, NoExploration()).logps
        assert plain_head(model)
        model.config.final_logit_softcapping = 30.0  # a config that processes the logits
        assert not plain_head(model)
        del model.config.final_logit_softcapping
        model.get_output_embeddings().register_forward_hook(lambda m, a, out: out * 2.0)
        assert not plain_head(model)  # seen on the call after the hook, though the numeric check was remembered
        scaled = completion_logps(model, gen, NoExploration(), temperature=2.0).logps
    torch.testing.assert_close(scaled, plain, atol=1e-5, rtol=1e-4)  # 2 logits at T = 2 = the plain ones at T = 1


def _early_ending(temperature, **kw):
    """A tiny Coconut model's prompts and decoding settings under which rows end at different steps."""
    model, tok = tiny("gpt2")
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=2)
    prompts = [encode_prompt(tok, q, cfg, 2) for q in QUESTIONS]
    decode = dict(latent_token_id=cfg.latent_token_id, pad_token_id=tok.pad_token_id, num_generations=3,
                  max_new_tokens=20, temperature=temperature, **kw)  # fmt: skip
    free = generate(model, prompts, eos_token_id=-1, generator=torch.Generator().manual_seed(1), **decode)
    eos = int(free.completion_ids[:, 2:].flatten().mode().values)  # a frequent token ends rows early, at different steps
    return model, prompts, dict(decode, eos_token_id=eos)


def assert_same_generation(a, b):
    """Same tokens, masks and ends; the sampled log-probs equal within float rounding (a smaller batch can
    round a matmul differently)."""
    for field in ("completion_ids", "completion_mask", "truncated"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    torch.testing.assert_close(a.sample_logps, b.sample_logps, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_checking_for_finished_rows_every_few_tokens_changes_nothing(temperature):
    """``sync_every`` (how often the host reads whether every row finished) leaves the generation as it is:
    the columns decoded after the last row ended are cut off."""
    model, prompts, decode = _early_ending(temperature)
    gens = [generate(model, prompts, sync_every=k, generator=torch.Generator().manual_seed(1), **decode) for k in (1, 5, 64)]
    assert gens[0].completion_mask.sum(1).lt(20).any()  # some rows did end early
    for g in gens[1:]:
        assert_same_generation(g, gens[0])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("exploring", [False, True])
def test_finished_rows_leaving_the_batch_changes_nothing(temperature, exploring, monkeypatch):
    """Rows that finished leave the decoding batch (their KV cache, mask, sampling keys and dropout masks are
    dropped): the generation is the one of a batch that keeps every row to the end, whenever they leave."""
    from latentrl.exploration import DropoutExploration
    from latentrl.models import latent

    model, prompts, decode = _early_ending(temperature)
    batch_sizes = []  # the rows left after each compaction
    drop = latent._LiveRows.drop_finished
    monkeypatch.setattr(latent._LiveRows, "drop_finished",
                        lambda self, *a: batch_sizes.append(len(self.rows) - int(self.done.sum())) or drop(self, *a))  # fmt: skip

    def run(compact_at):
        noise = DropoutExploration(p=0.3, sites=("thought", "mlp"), cover_answer=True) if exploring else None
        return generate(model, prompts, compact_at=compact_at, exploration=noise, seeds=torch.arange(12) * 7 + 3,
                        generator=torch.Generator().manual_seed(1), **decode)  # fmt: skip

    kept = run(0.0)  # never compacts
    lengths = kept.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 2 and lengths.lt(20).any()  # rows end at several different steps
    assert batch_sizes == []
    assert_same_generation(run(1e-9), kept)  # a row leaves as soon as it ends
    assert len(batch_sizes) >= 2 and batch_sizes == sorted(batch_sizes, reverse=True) and batch_sizes[0] < 12
    for compact_at in (0.25, 0.7):  # the default, rarely
        assert_same_generation(run(compact_at), kept)


def test_a_rows_tokens_do_not_depend_on_the_other_rows():
    """Each row samples from its own stream (its seed and one draw of the generator): alone, or in another
    batch in another place, a row draws the same tokens."""
    model, prompts, decode = _early_ending(1.0, compact_at=0.25)
    decode["num_generations"] = 1
    seeds = torch.tensor([11, 22, 33, 44])
    full = generate(model, prompts, seeds=seeds, generator=torch.Generator().manual_seed(5), **decode)
    order = [2, 0]
    part = generate(model, [prompts[i] for i in order], seeds=seeds[order], generator=torch.Generator().manual_seed(5), **decode)
    for j, i in enumerate(order):
        assert full.completion_lists()[i] == part.completion_lists()[j]
    other = generate(model, prompts, seeds=seeds + 1, generator=torch.Generator().manual_seed(5), **decode)
    assert other.completion_lists() != full.completion_lists()  # the seed does choose the draws


def test_the_draw_table_is_each_steps_draws_bit_for_bit():
    """``draw_table`` (all steps in one hash) against ``row_uniforms`` step by step; rows picked out of the table
    (as the loop drops finished rows) are those rows' draws."""
    from latentrl.models.sampling import draw_table, row_uniforms, sampling_keys

    keys = sampling_keys(torch.tensor([0, 7, 3, 2**40]), torch.Generator().manual_seed(1))
    table = draw_table(keys, 9)
    assert table.shape == (4, 9) and table.dtype == torch.float64
    assert torch.equal(table, torch.stack([row_uniforms(keys, t) for t in range(9)], 1))
    assert torch.equal(draw_table(keys[[2, 0]], 9), table[[2, 0]])
    assert torch.equal(draw_table(keys, 4, first=5), table[:, 5:])
    assert ((table >= 0) & (table < 1)).all() and table.unique().numel() == table.numel()


def test_the_decoding_loop_reads_its_draws_in_blocks_bit_for_bit(monkeypatch):
    """``_LiveRows.draw`` hashes ``DRAW_BLOCK`` steps when the loop reaches them: step by step it gives
    ``row_uniforms`` of the live rows, across block edges and after rows leave mid-block; greedy gives None."""
    import latentrl.models.latent as latent
    from latentrl.models.sampling import row_uniforms, sampling_keys

    monkeypatch.setattr(latent, "DRAW_BLOCK", 4)
    keys = sampling_keys(torch.arange(6), torch.Generator().manual_seed(0))
    state = lambda k: latent._LiveRows(torch.arange(6), torch.ones(6, 3, dtype=torch.long), torch.zeros(6, 1, dtype=torch.long), k)  # noqa: E731
    live, rows = state(keys), torch.arange(6)
    for t in range(11):
        if t == 6:  # rows 1 and 4 leave in the middle of the second block
            keep = torch.tensor([0, 2, 3, 5])
            live.select(keep)
            rows = rows[keep]
        assert torch.equal(live.draw(t), row_uniforms(keys[rows], t)), t
    assert live.draws.shape == (4, 4) and live.draws_from == 8
    assert state(None).draw(0) is None


def test_inverse_cdf_sampler_matches_the_distribution():
    """The counter-based sampler against the categorical it samples: frequencies over 40,000 rows within 4
    standard errors of p, zero-probability ids never drawn, and the generator advancing once per call."""
    from latentrl.models.sampling import row_uniforms, sample_next, sampling_keys

    p = torch.tensor([0.4, 0.0, 0.25, 0.2, 0.1, 0.05, 0.0])
    n = 40_000
    g = torch.Generator().manual_seed(0)
    draws = sample_next(torch.log(p).expand(n, -1), 1.0, u=row_uniforms(sampling_keys(torch.arange(n), g), 3))
    freq = torch.bincount(draws, minlength=len(p)).double() / n
    se = (p.double() * (1 - p.double()) / n).sqrt()
    assert (freq - p).abs().le(4 * se + 1e-12).all(), freq
    assert freq[1] == 0 and freq[6] == 0
    h = torch.Generator().manual_seed(0)
    torch.randint(0, 2**62, (1,), generator=h, dtype=torch.long)  # one draw, as sampling_keys takes
    assert torch.randint(0, 10**9, (1,), generator=g).item() == torch.randint(0, 10**9, (1,), generator=h).item()


def test_sampled_token_logp_against_log_softmax():
    from latentrl.models.thinking.logprobs import selected_logps

    g = torch.Generator().manual_seed(3)
    logits, tok = torch.randn(6, 40, generator=g) * 3, torch.randint(0, 40, (6,), generator=g)
    for temperature in (1.0, 0.7, 0.0):
        ref = torch.log_softmax(logits / (temperature or 1.0), -1).gather(-1, tok[:, None]).squeeze(-1)
        torch.testing.assert_close(selected_logps(logits, tok, temperature)[0], ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_static_kv_cache_generates_what_the_dynamic_one_does(family, temperature):
    """``cache_implementation="static"`` (a preallocated cache and a full-width mask, for torch.compile /
    CUDA graphs) against the dynamic cache, through Coconut thoughts and answer decoding."""
    model, tok = tiny(family)
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=2)
    prompts = [encode_prompt(tok, q, cfg, 2) for q in QUESTIONS]
    decode = dict(latent_token_id=cfg.latent_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                  num_generations=2, max_new_tokens=12, temperature=temperature)  # fmt: skip
    dynamic = generate(model, prompts, generator=torch.Generator().manual_seed(2), **decode)
    static = generate(model, prompts, cache_implementation="static", generator=torch.Generator().manual_seed(2), **decode)
    assert_same_generation(static, dynamic)
    torch.testing.assert_close(static.thoughts, dynamic.thoughts)


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_a_compiled_decoding_step_generates_what_the_eager_one_does(monkeypatch, cache):
    """``torch_compile`` routes the decoding steps through ``torch.compile`` (here its ``eager`` backend: the
    graph capture without a C++ build) and changes no token; the compiled step is built once per model and cache
    kind (shapes static with the static cache, dynamic with the dynamic one, where rows that ended leave and the
    Coconut thought steps, fed embeddings, run through it too)."""
    from latentrl.models import latent

    calls, embeds_fed = [], []
    real = torch.compile

    def counting_compile(fn, **kw):
        calls.append(kw)
        compiled = real(fn, backend="eager", **kw)
        return lambda *a, **k: embeds_fed.append("inputs_embeds" in k) or compiled(*a, **k)

    monkeypatch.setattr(latent.torch, "compile", counting_compile)
    model, prompts, decode = _early_ending(1.0, cache_implementation=cache)
    eager = generate(model, prompts, generator=torch.Generator().manual_seed(4), **decode)
    assert eager.completion_mask.sum(1).lt(20).any()  # rows end early (and leave a dynamic batch)
    for _ in range(2):
        compiled = generate(model, prompts, torch_compile=True, generator=torch.Generator().manual_seed(4), **decode)
        assert_same_generation(compiled, eager)
    assert len(calls) == 1 and calls[0]["dynamic"] is (cache == "dynamic")
    assert any(embeds_fed) is (cache == "dynamic") and not all(embeds_fed)  # thoughts, then decoded tokens


def test_sampling_keys_do_not_collapse_when_the_generator_is_seeded_like_the_rollouts():
    """GRPO seeds the sampling generator with the seed of ``rollout_seeds``: on the CPU its first draw is then
    row 0's rollout seed, which must not cancel it (row 0 would draw the same uniforms on every step)."""
    from latentrl.models.sampling import sampling_keys
    from latentrl.train.grpo import rollout_seeds

    keys = [sampling_keys(rollout_seeds(0, step, 8), torch.Generator().manual_seed(step))[0].item() for step in range(4)]
    assert len(set(keys)) == 4


def test_a_static_cache_is_reused_and_a_deep_copy_compiles_its_own_step(monkeypatch):
    import copy

    from latentrl.models import latent

    model, _ = tiny("gpt2")
    a, b = latent.static_cache(model, 4, 64), latent.static_cache(model, 4, 64)
    assert a is b and latent.static_cache(model, 2, 64) is not a  # the same object for the same shape (CUDA graphs)
    monkeypatch.setattr(latent.torch, "compile", lambda fn, **kw: fn)
    twin = copy.deepcopy(model)
    assert latent.compiled_step(model, True) is latent.compiled_step(model, True)
    assert latent.compiled_step(twin, True).__wrapped__.__self__ is twin  # bound to the copy's forward, not the original's


def test_a_compiled_call_raises_the_recompile_limit_and_restores_it_even_when_it_fails(monkeypatch):
    from latentrl.models import latent

    config, seen = torch._dynamo.config, []

    def failing(*args, **kwargs):
        seen.append(getattr(config, latent._LIMIT_NAME))
        raise RuntimeError("compiled forward failed")

    monkeypatch.setattr(latent.torch, "compile", lambda fn, **kw: failing)
    model, _ = tiny("gpt2")
    before = getattr(config, latent._LIMIT_NAME)
    setattr(config, latent._LIMIT_NAME, 3)  # a user's lower limit (monkeypatch cannot undo a config module's)
    try:
        with pytest.raises(RuntimeError, match="compiled forward failed"):
            latent.compiled_step(model, False)(input_ids=torch.zeros(1, 2, dtype=torch.long))
        assert seen == [latent.RECOMPILE_LIMIT] and getattr(config, latent._LIMIT_NAME) == 3
    finally:
        setattr(config, latent._LIMIT_NAME, before)


def test_an_exploration_source_without_select_rows_keeps_its_rows():
    """A user's source written to the older protocol (no ``select_rows``): decoding keeps every row."""
    model, prompts, decode = _early_ending(1.0)

    class Old:
        def session(self, model, seeds):
            from contextlib import nullcontext

            return nullcontext()

        def set_phase(self, phase, step=0):
            pass

        def thought(self, h, step):
            return h * 0.5

    out = generate(model, prompts, exploration=Old(), compact_at=1e-9, generator=torch.Generator().manual_seed(1), **decode)
    lengths = out.completion_mask.sum(1)
    assert len(lengths) == 12 and lengths.lt(lengths.max()).any()  # rows ended early, and none was dropped


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["discrete", "coconut"])
@pytest.mark.parametrize("cover_prefill", [None, False, True])
def test_a_prefill_shared_by_rows_equals_one_per_row(family, mode, cover_prefill):
    """``share_prefill`` runs each distinct prompt of a grouped batch once (counted at the first block) and
    gives the per-row forward's logits and parameter gradients within rounding; an exploration source that
    perturbs the prefill (dropout with ``cover_prefill``) turns it off."""
    from contextlib import nullcontext

    from latentrl.exploration import make_exploration
    from latentrl.exploration.dropout import decoder_blocks

    model, tok = tiny(family)
    cfg = ThinkingConfig.from_tokenizer(tok, mode, num_latents=2)
    prompts = [encode_prompt(tok, q, cfg) for q in QUESTIONS[:3]]
    gen = generate(model, prompts, latent_token_id=cfg.latent_token_id, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id, num_generations=3, max_new_tokens=8, temperature=1.0)  # fmt: skip
    ids = torch.cat([gen.prompt_ids, gen.completion_ids], 1)
    mask = torch.cat([gen.prompt_mask, gen.completion_mask], 1)
    latent = torch.cat([gen.latent_mask, torch.zeros_like(gen.completion_mask, dtype=torch.bool)], 1)
    P = gen.prompt_ids.shape[1]
    weights = torch.randn(ids.shape[0], ids.shape[1] - P + 1, model.config.vocab_size, generator=torch.Generator().manual_seed(0))
    results = []
    for share in (False, True):
        exploration = None if cover_prefill is None else make_exploration("dropout", p=0.3, sites=("mlp",), cover_prefill=cover_prefill)
        batches = []
        hook = decoder_blocks(model)[0].register_forward_pre_hook(
            lambda m, a, kw: batches.append((a[0] if a else kw["hidden_states"]).shape[0]), with_kwargs=True)
        model.zero_grad()
        with exploration.session(model, gen.seeds) if exploration else nullcontext():
            logits = latent_forward(model, ids, mask, latent, exploration, prompt_len=P, logits_from=P - 1,
                                    share_prefill=share).logits  # fmt: skip
        hook.remove()
        (logits * weights).sum().backward()
        shared = share and cover_prefill is not True
        assert batches[0] == (3 if shared else 9), batches
        assert all(b == 9 for b in batches[1:])
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ref, ref_grads), (ours, grads) = results
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_reserved_cache_layer_holds_what_a_growing_one_does():
    """``ReservedLayer`` (positions reserved up front, written in place, views handed out) against HF's
    ``DynamicLayer`` (concatenation): a prefill, steps past the reserve (it grows), rows leaving and rows copied
    to a group, interleaved repeats and a crop; and it refuses to write under autograd."""
    from transformers.cache_utils import DynamicLayer

    from latentrl.models.reserved_cache import ReservedLayer

    g = torch.Generator().manual_seed(0)
    ours, ref = ReservedLayer(capacity=6), DynamicLayer()
    kv = lambda b, n: (torch.randn(b, 2, n, 4, generator=g), torch.randn(b, 2, n, 4, generator=g))  # noqa: E731

    def check():
        assert ours.get_seq_length() == ref.get_seq_length()
        assert torch.equal(ours.keys, ref.keys) and torch.equal(ours.values, ref.values)

    for step in [kv(3, 4), kv(3, 1), kv(3, 1), kv(3, 1)]:  # 4 + 3 positions: past the reserve of 6
        a, b = ours.update(*step), ref.update(*step)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        check()
    for change in (lambda c: c.batch_select_indices(torch.tensor([2, 0])), lambda c: c.batch_select_indices(torch.tensor([0, 0, 1])),
                   lambda c: c.batch_repeat_interleave(2), lambda c: c.crop(-2)):  # fmt: skip
        change(ours), change(ref)
        check()
        step = kv(ref.keys.shape[0], 1)
        ours.update(*step), ref.update(*step)
        check()
    with pytest.raises(RuntimeError, match="without gradients"):
        ours.update(*(x.requires_grad_() for x in kv(6, 1)))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generation_on_the_reserved_cache_equals_the_growing_cache(family, monkeypatch):
    """Generation's KV cache reserves prompt + new-token positions (``reserved_cache``); with HF's growing
    ``DynamicCache`` instead, through Coconut thoughts, a shared prefill and rows leaving the batch, the
    generation is the same."""
    from transformers import DynamicCache

    from latentrl.models import latent

    model, prompts, decode = _early_ending(1.0)
    if family == "llama":
        model, tok = tiny("llama")
        cfg = ThinkingConfig.from_tokenizer(tok, "coconut", num_latents=2)
        prompts = [encode_prompt(tok, q, cfg, 2) for q in QUESTIONS]
        decode = dict(decode, latent_token_id=cfg.latent_token_id, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    reserved = generate(model, prompts, generator=torch.Generator().manual_seed(1), compact_at=1e-9, **decode)
    monkeypatch.setattr(latent, "reserved_cache", lambda model, capacity: DynamicCache(config=model.config))
    growing = generate(model, prompts, generator=torch.Generator().manual_seed(1), compact_at=1e-9, **decode)
    assert_same_generation(reserved, growing)
    torch.testing.assert_close(reserved.thoughts, growing.thoughts)
