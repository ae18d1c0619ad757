"""One-position attention on a CPU (``latentrl.models.attention``) against a float64 definition, HF's ``sdpa``,
and through whole models: cached decoding, generation, a saved checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import latentrl.models.attention as attention
from latentrl.models import build_tiny_model, generate, load_checkpoint, save_checkpoint, ThinkingConfig
from latentrl.models.latent import CACHE_KWARG
from latentrl.models.attention import ATTENTION, decode_attention_forward, one_query_attention, use_decode_attention


def definition(q, k, v, mask, scale):
    """softmax(q k^T * scale + mask) v in float64, with K and V repeated for every query head."""
    r = q.shape[1] // k.shape[1]
    k, v = (x.double().repeat_interleave(r, dim=1) for x in (k, v))
    s = q.double() @ k.transpose(-1, -2) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    return torch.softmax(s, -1) @ v


def inputs(B=3, H=4, Hkv=2, L=7, D=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=g).to(dtype) for shape in ((B, H, 1, D), (B, Hkv, L, D), (B, Hkv, L, D)))
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
    mask[0, ..., :3] = False  # a left-padded row
    mask[-1, ..., 5 % L] = False
    return q, k, v, mask


@pytest.mark.parametrize("kind", ["none", "bool", "float"])
@pytest.mark.parametrize("Hkv", [4, 2, 1])
def test_one_query_attention_is_the_definition(kind, Hkv):
    q, k, v, mask = inputs(Hkv=Hkv)
    m = {"none": None, "bool": mask, "float": torch.zeros(mask.shape).masked_fill(~mask, -1e9)}[kind]
    out = one_query_attention(q, k, v, m, 0.3)
    assert out.shape == q.shape and out.dtype == torch.float32
    assert torch.allclose(out.double(), definition(q, k, v, m, 0.3), atol=1e-6)


def test_under_bf16_the_scores_are_float32():
    """bf16 in, bf16 out, but nothing rounded to bf16 in between: within one bf16 rounding of the definition
    (computing q k^T in bf16, as autocast would, is off by several)."""
    q, k, v, mask = inputs(dtype=torch.bfloat16, L=64, D=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = one_query_attention(q, k, v, mask, 0.125)
    ref = definition(q, k, v, mask, 0.125)
    assert out.dtype == torch.bfloat16
    assert ((out.double() - ref).abs() <= 2.0**-8 * ref.abs() + 1e-6).all()


def test_gradients_are_the_definitions():
    q, k, v, mask = (x.double() if x.is_floating_point() else x for x in inputs(B=2, L=5, D=4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: one_query_attention(q, k, v, mask, 0.5), (q, k, v))


class Module(torch.nn.Module):  # what HF's attention functions read from the layer
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


def test_the_attention_function_equals_hfs_sdpa():
    q, k, v, mask = inputs()
    ours, none = decode_attention_forward(Module(2), q, k, v, mask, dropout=0.0, scaling=0.3, position_ids=None)
    theirs, _ = sdpa_attention_forward(Module(2), q, k, v, mask, dropout=0.0, scaling=0.3)
    assert none is None and ours.shape == theirs.shape == (3, 1, 4, 8)  # [B, Q, H, D]
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("case", ["two queries", "dropout", "position bias", "soft-cap", "wider mask", "per-head mask",
                                  "one query row for three key rows"])
def test_everything_else_goes_to_hfs_sdpa(case, monkeypatch):
    q, k, v, mask = inputs(Hkv=4)
    kwargs = {}
    if case == "two queries":
        q, mask = q.expand(-1, -1, 2, -1), mask.expand(-1, -1, 2, -1)
    elif case == "dropout":
        kwargs["dropout"] = 0.1
    elif case == "position bias":
        kwargs["position_bias"] = torch.zeros(1, 4, 1, 7)
    elif case == "soft-cap":
        kwargs["softcap"] = 30.0
    elif case == "wider mask":
        mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    elif case == "one query row for three key rows":
        q, mask = q[:1], None
    else:
        mask = mask.expand(-1, 4, -1, -1)
    calls = []
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *a, **kw: calls.append(kw) or ("sdpa", None))
    monkeypatch.setattr(attention, "one_query_attention", lambda *a: pytest.fail("took the one-query path"))
    assert decode_attention_forward(Module(1), q, k, v, mask, **kwargs)[0] == "sdpa" and len(calls) == 1


def gqa_llama():
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_cached_decoding_of_a_model_equals_sdpas(family, monkeypatch):
    """Prefill a left-padded batch, then four one-token steps: logits equal to HF's sdpa's, and the one-query
    path was the one taken (every layer, every step)."""
    model = build_tiny_model(n_layer=2, n_embd=32, n_head=4)[0].eval() if family == "gpt2" else gqa_llama()
    use_decode_attention(model)
    calls, original = [], attention.one_query_attention
    monkeypatch.setattr(attention, "one_query_attention", lambda *a: calls.append(1) or original(*a))
    assert model.config._attn_implementation == ATTENTION
    ids = torch.randint(3, 30, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    logits = {}
    for impl in (ATTENTION, "sdpa"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            out = model(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
            steps = [out.logits[:, -1]]
            for t in range(5, 9):
                out = model(input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], use_cache=True,
                            **{CACHE_KWARG: out.past_key_values})
                steps.append(out.logits[:, -1])
        logits[impl] = torch.stack(steps)
        if impl == ATTENTION:
            assert len(calls) == 2 * 4  # two layers, four one-token steps
    assert torch.allclose(logits[ATTENTION], logits["sdpa"], atol=1e-5)


def test_generation_takes_the_one_query_path_and_decodes_as_sdpa(monkeypatch):
    model, tok = build_tiny_model(n_layer=2, n_embd=32, n_head=4)
    model.eval()
    calls = []
    original = attention.one_query_attention
    monkeypatch.setattr(attention, "one_query_attention", lambda *a: calls.append(1) or original(*a))
    prompts = [tok.encode("12+34=")[:6], tok.encode("7+8=")[:4]]
    kw = dict(latent_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, num_generations=2,
              max_new_tokens=6, temperature=1.0)  # fmt: skip
    ours = generate(model, prompts, generator=torch.Generator().manual_seed(0), **kw)
    assert len(calls) >= 2 * 5  # two layers, every step after the prefill (rows may finish early)
    model.set_attn_implementation("sdpa")
    theirs = generate(model, prompts, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(ours.completion_ids, theirs.completion_ids)
    assert torch.allclose(ours.sample_logps, theirs.sample_logps, atol=1e-5)


def test_a_saved_checkpoint_does_not_name_it(tmp_path):
    model, tok = build_tiny_model(n_layer=1, n_embd=16, n_head=2)
    save_checkpoint(tmp_path / "ckpt", model, tok, ThinkingConfig())
    assert ATTENTION not in (tmp_path / "ckpt" / "config.json").read_text()
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text()).get("_attn_implementation") is None
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt").config._attn_implementation == "sdpa"
    assert load_checkpoint(tmp_path / "ckpt")[0].config._attn_implementation == ATTENTION


def test_other_implementations_are_kept():
    model = gqa_llama()
    model.set_attn_implementation("eager")
    use_decode_attention(model)
    assert model.config._attn_implementation == "eager"


def test_a_value_head_of_another_width_and_a_row_that_sees_nothing_are_sdpas():
    """Value heads narrower than the query's (MLA-style models), and a fully masked row (0, as sdpa gives)."""
    q, k, _, mask = inputs(Hkv=4)
    v = torch.randn(3, 4, 7, 5)
    mask[1] = False
    ours, _ = decode_attention_forward(Module(1), q, k, v, mask, scaling=0.3)
    theirs, _ = sdpa_attention_forward(Module(1), q, k, v, mask, scaling=0.3)
    assert ours.shape == theirs.shape == (3, 1, 4, 5)
    assert torch.allclose(ours, theirs, atol=1e-6) and (ours[1] == 0).all()


def test_only_the_checked_model_types_switch():
    """Some HF models compare their attention's name to "sdpa" (Gemma 4's shared-KV layers): only the types whose
    code was checked switch."""
    from transformers import MistralConfig

    config = MistralConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    use_decode_attention(model)
    assert model.config._attn_implementation == "sdpa"
    assert set(attention.MODEL_TYPES) == {"gpt2", "llama", "qwen2"}
