"""Memory accounting against a real model's parameter count and a hand-computed KV cache."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

from par_export.memory import kv_cache_bytes, llm_parameters, prefill_memory
from par_export.models.geometries import llava_config


def test_parameter_count_matches_transformers():
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    assert llm_parameters(config) == sum(p.numel() for p in model.parameters())


def test_kv_cache_by_hand_and_the_7b_geometry():
    config = llava_config("llava-1.5-7b").text_config
    # 2 (K and V) x 32 layers x 32 heads x 128 dims x 640 tokens x 2 bytes
    assert kv_cache_bytes(config, 640) == 2 * 32 * 32 * 128 * 640 * 2
    assert 6.6e9 < llm_parameters(config) < 6.8e9  # LLaVA-1.5-7B's Vicuna: ~6.74B
    full, reduced = prefill_memory(config, 576, 64), prefill_memory(config, 64, 64)
    assert full.weights == reduced.weights
    assert reduced.kv_cache / full.kv_cache == 128 / 640
