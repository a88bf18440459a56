"""Reduced embeddings laid out for TensorRT-LLM (p-tuning table) and TensorRT Edge-LLM (image-token rows)."""

from __future__ import annotations

import numpy as np
import pytest

from par_export.runtime.emit import edge_llm_inputs, tensorrt_llm_inputs

EMBEDS = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)  # [B=2, W=4, D=3]
KEPT = np.array([2, 3])
BEFORE, AFTER = [[1, 10], [1]], [[11], [12, 13]]


def test_tensorrt_llm_fake_ids_index_the_table():
    out = tensorrt_llm_inputs(BEFORE, AFTER, EMBEDS, KEPT, vocab_size=100)
    assert out.prompt_embedding_table.shape == (5, 3) and out.prompt_vocab_size.tolist() == [5]
    assert out.input_ids[0].tolist() == [1, 10, 100, 101, 11]
    assert out.input_ids[1].tolist() == [1, 102, 103, 104, 12, 13]
    for b, ids in enumerate(out.input_ids):  # every fake id reads its own image's rows
        rows = ids[ids >= 100] - 100
        assert np.array_equal(out.prompt_embedding_table[rows], EMBEDS[b, : KEPT[b]])


def test_edge_llm_rows_follow_image_tokens():
    out = edge_llm_inputs(BEFORE, AFTER, EMBEDS, KEPT, image_token_id=7)
    assert [int((ids == 7).sum()) for ids in out.input_ids] == [2, 3]
    assert out.visual_output.dtype == np.float16 and out.visual_output.shape == (5, 3)
    np.testing.assert_array_equal(out.visual_output[2:], EMBEDS[1, :3].astype(np.float16))


def test_mismatched_counts_are_refused():
    with pytest.raises(ValueError, match="one image per prompt"):
        edge_llm_inputs(BEFORE[:1], AFTER, EMBEDS, KEPT, 7)
