"""FLOPs accounting against a hand computation and against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from par_export.flops import flops_table, llava_flops, llm_prefill_flops, vision_tower_flops
from par_export.models.geometries import clip_l14_text, llava_config


def tiny_llama():
    return LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, vocab_size=10)


def test_one_llama_layer_by_hand():
    # T=5, D=8, 2 heads of 4, 1 KV head, I=16, V=10; 2 FLOPs per multiply-add.
    q = 2 * 5 * 8 * 8
    k = v = 2 * 5 * 8 * 4
    o = 2 * 5 * 8 * 8
    scores = weighted_sum = 2 * 5 * 5 * 8
    mlp = 3 * (2 * 5 * 8 * 16)
    lm_head_last_position = 2 * 8 * 10
    assert llm_prefill_flops(tiny_llama(), 5) == q + k + v + o + scores + weighted_sum + mlp + lm_head_last_position == 6720


@pytest.mark.parametrize("tokens", [3, 17])
def test_llm_matches_torch_flop_counter(tokens):
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50)
    model = LlamaForCausalLM._from_config(config, attn_implementation="eager").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, 50, (1, tokens)), logits_to_keep=1)
    assert counter.get_total_flops() == llm_prefill_flops(config, tokens)


def test_vision_tower_matches_torch_flop_counter():
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    model = CLIPVisionModel._from_config(config, attn_implementation="eager").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() == vision_tower_flops(config)


def test_llava_7b_table_shape_and_trends():
    config = llava_config("llava-1.5-7b")
    rows = flops_table(config, [576, 192, 128, 64], [16, 64, 256], clip_l14_text())
    by_key = {(r.kept, r.text_tokens): r for r in rows}
    full = by_key[(576, 64)]
    # 7B decoder: about 2 * 6.7e9 FLOPs per token.
    assert 0.95 < full.llm / (2 * 6.7e9 * 640) < 1.05
    assert full.reducer == 0 and by_key[(64, 64)].reducer > 0
    for t in (16, 64, 256):
        llm = [by_key[(k, t)].llm for k in (576, 192, 128, 64)]
        assert llm == sorted(llm, reverse=True)
    # A longer text dilutes the saving.
    saving = {t: 1 - by_key[(64, t)].total / by_key[(576, t)].total for t in (16, 64, 256)}
    assert saving[16] > saving[64] > saving[256]


def test_reducer_costs_little_next_to_the_llm():
    row = llava_flops(llava_config("llava-1.5-7b"), 64, 64, clip_text_config=clip_l14_text())
    assert row.reducer < 0.01 * row.llm
