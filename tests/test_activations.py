"""GELU as one fused op (``latentrl.models.activations``): against the tanh formula in float64, and through whole
models (logits and gradients of a swapped GPT-2 against HF's own modules, a saved checkpoint, a loaded one)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config
from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

from latentrl.models import build_tiny_model, load_checkpoint, save_checkpoint, ThinkingConfig
from latentrl.models.activations import use_fused_gelu


def gelu_tanh_float64(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("unfused", [NewGELUActivation, FastGELUActivation])
def test_the_fused_op_is_the_same_function(unfused):
    x = torch.linspace(-8, 8, 4001)
    ref = gelu_tanh_float64(x)
    for module in (unfused(), GELUTanh()):
        assert torch.allclose(module(x).double(), ref, atol=1e-6, rtol=0)
    xg = x.double().requires_grad_()
    (grad_ref,) = torch.autograd.grad(gelu_tanh_float64(xg).sum(), xg)
    xf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(GELUTanh()(xf).sum(), xf)
    assert torch.allclose(grad.double(), grad_ref, atol=4e-6, rtol=0)  # a few float32 ulps


def gpt2(activation: str = "gelu_new"):
    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4, activation_function=activation,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_fast"])
def test_a_swapped_gpt2_computes_the_same_logits_and_gradients(activation):
    theirs = gpt2(activation)
    ours = copy.deepcopy(theirs)
    assert use_fused_gelu(ours) == 2  # one per block
    assert all(type(m.mlp.act) is GELUTanh for m in ours.transformer.h)
    assert not any(isinstance(m, (NewGELUActivation, FastGELUActivation)) for m in ours.modules())
    ids = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    out_a, out_b = theirs(input_ids=ids).logits, ours(input_ids=ids).logits
    assert torch.allclose(out_a, out_b, atol=1e-5)
    out_a.square().mean().backward()
    out_b.square().mean().backward()
    for (name, a), b in zip(theirs.named_parameters(), ours.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name


def test_other_activations_and_hooked_modules_are_kept():
    model = gpt2("gelu")  # erf GELU: already one op
    assert use_fused_gelu(model) == 0
    model = gpt2()
    model.transformer.h[0].mlp.act.register_forward_hook(lambda *a: None)
    assert use_fused_gelu(model) == 1
    assert type(model.transformer.h[0].mlp.act) is NewGELUActivation
    model = gpt2()
    model.transformer.h[1].mlp.act._hf_hook = object()  # accelerate's dispatch wraps forward instead of a hook
    assert use_fused_gelu(model) == 1 and type(model.transformer.h[1].mlp.act) is NewGELUActivation


def test_the_swap_keeps_train_and_eval_mode():
    model = gpt2().eval()
    use_fused_gelu(model)
    assert not any(m.training for m in model.modules())
    model = gpt2().train()
    use_fused_gelu(model)
    assert all(m.training for m in model.modules())


def test_built_and_loaded_models_run_it_and_checkpoints_do_not_say_so(tmp_path):
    model, tok = build_tiny_model(n_layer=1, n_embd=16, n_head=2)
    assert type(model.transformer.h[0].mlp.act) is GELUTanh
    save_checkpoint(tmp_path / "ckpt", model, tok, ThinkingConfig())
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["activation_function"] == "gelu_new"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert type(plain.transformer.h[0].mlp.act) is NewGELUActivation
    loaded = load_checkpoint(tmp_path / "ckpt")[0]
    assert type(loaded.transformer.h[0].mlp.act) is GELUTanh
    ids = torch.randint(0, len(tok), (2, 9), generator=torch.Generator().manual_seed(2))
    plain.eval(), loaded.eval()
    a, b = plain(input_ids=ids).logits, loaded(input_ids=ids).logits
    shown = b > -1e3  # latentrl's models score the layout markers at -1e4 (never generated)
    assert 0 < (~shown).sum() < shown.sum() and torch.allclose(a[shown], b[shown], atol=1e-5)
