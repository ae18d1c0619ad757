"""Policy read-outs (BuPO's internal layer policies): the full policy as layer L's read-out, and the
entropy against a naive per-position computation."""

import math

import pytest
import torch

from latentrl.models import build_tiny_model
from latentrl.models.readout import ban_never_sampled, final_norm, layer_logits, token_entropy, unembedding


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_last_layer_with_the_final_norm_is_the_full_policy(family):
    model, _ = build_tiny_model(family=family, n_layer=3, n_embd=32, n_head=2, seed=1)
    ids = torch.tensor([[5, 9, 14, 20, 33]])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        # hidden_states[L] is already normed in HF; the raw last block output is what the norm takes
        raw = {}
        handle = final_norm(model).register_forward_hook(lambda m, a, o: raw.setdefault("h", a[0]))
        model(ids)
        handle.remove()
        lens = ban_never_sampled(model, layer_logits(raw["h"], unembedding(model), final_norm(model)))
    torch.testing.assert_close(lens, out.logits, atol=1e-5, rtol=1e-5)
    top = ban_never_sampled(model, layer_logits(out.hidden_states[-1], unembedding(model)))
    torch.testing.assert_close(top, out.logits, atol=1e-5, rtol=1e-5)


def test_token_entropy_equals_a_naive_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=g) * 3
    got = token_entropy(logits)
    for b in range(2):
        for t in range(3):
            z = [math.exp(float(x)) for x in logits[b, t]]
            p = [v / sum(z) for v in z]
            assert got[b, t].item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-5)
    assert token_entropy(torch.zeros(1, 4)).item() == pytest.approx(math.log(4), rel=1e-6)  # uniform: log V
