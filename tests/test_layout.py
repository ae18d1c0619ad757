"""Layouts, the curriculum plan and sampling, checked by hand-worked cases."""

import torch

from latentrl.models import ThinkingConfig, build_char_tokenizer, collate, encode_example
from latentrl.models.sampling import row_uniforms, sample_next, sampling_keys
from latentrl.models.layout import stage_plan


def test_stage_plan_by_hand():
    # (num_steps, stage, max_stage, c, pad) -> (removed, thoughts)
    assert stage_plan(4, 0, 3, 2, False) == (0, 0)
    assert stage_plan(4, 2, 3, 2, False) == (2, 4)
    assert stage_plan(2, 3, 3, 2, False) == (2, 4)  # fewer steps than the stage
    assert stage_plan(4, 3, 3, 1, False) == (3, 3)  # one language step left at the last stage
    assert stage_plan(4, 4, 3, 1, False) == (4, 3)  # past the last stage: all steps removed
    assert stage_plan(2, 4, 3, 2, False) == (2, 4)
    assert stage_plan(2, 4, 3, 2, True) == (2, 6)  # pad_latent_to_max


def test_coconut_layout_and_labels():
    tok = build_char_tokenizer()
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut", thoughts_per_step=2)
    e = encode_example(tok, "1+2*3", ["1+2=3", "3*3=9"], "9", cfg, removed_steps=1, num_latents=2)
    text = tok.decode(e.ids)
    assert text == "1+2*3\n<|start-latent|><|latent|><|latent|><|end-latent|>3*3=9\n### 9<|eos|>"
    supervised = tok.decode([t for t, lab in zip(e.ids, e.labels) if lab != -100])
    assert supervised == "3*3=9\n### 9<|eos|>"
    assert e.prompt_len == len(tok("1+2*3\n").input_ids) + 4


def test_discrete_and_nocot_layouts():
    tok = build_char_tokenizer()
    steps = ["1+2=3", "3*3=9"]
    cot = encode_example(tok, "1+2*3", steps, "9", ThinkingConfig.from_tokenizer(tok, "discrete"))
    assert tok.decode(cot.ids) == "1+2*3\n1+2=3\n3*3=9\n### 9<|eos|>"
    nocot = encode_example(tok, "1+2*3", steps, "9", ThinkingConfig.from_tokenizer(tok, "nocot"))
    assert tok.decode(nocot.ids) == "1+2*3\n### 9<|eos|>"


def test_collate_aligns_the_end_of_the_latent_block():
    tok = build_char_tokenizer()
    cfg = ThinkingConfig.from_tokenizer(tok, "coconut")
    a = encode_example(tok, "1+2", ["1+2=3"], "3", cfg, 1, 1)
    b = encode_example(tok, "1+2*3-4", ["1+2=3", "3*3=9", "9-4=5"], "5", cfg, 2, 2)
    batch = collate([a, b], tok.pad_token_id, cfg.latent_token_id)
    end = batch.input_ids == cfg.end_latent_token_id
    assert end[0].nonzero().item() == end[1].nonzero().item()
    assert batch.latent_mask.sum().item() == 3
    assert batch.attention_mask[0, : b.prompt_len - a.prompt_len].sum() == 0  # left padding of the shorter prompt


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keys = sampling_keys(torch.arange(2000), torch.Generator().manual_seed(0))
    draws = sample_next(logits.expand(2000, -1), 1.0, top_p=0.7, u=row_uniforms(keys, 0))
    assert set(draws.flatten().tolist()) == {0, 1}  # 0.5 + 0.3 >= 0.7: tokens 2 and 3 are cut
    freq0 = (draws == 0).float().mean().item()
    assert abs(freq0 - 0.5 / 0.8) < 0.04  # renormalised over the nucleus
    assert sample_next(logits, 0.0).item() == 0  # temperature 0 is greedy
