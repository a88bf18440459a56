"""``dart_embed`` against a plain-Python reading of TensorRT Edge-LLM's embedding-level DART
selection (its ``referenceSelect`` test helper: L1 pivots, then per pivot the ``ceil(r / p)``
least cosine-similar remaining tokens, ties to the lower index)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from par_export.reduce import create_reducer


def reference_select(image: np.ndarray, text: np.ndarray, k: int, image_pivots: int = 4,
                     text_pivots: int = 4) -> list[int]:
    """Kept image token indices, ascending, for one image ``[N, D]`` and its text rows ``[P, D]``."""
    image, text = image.astype(np.float64), text.astype(np.float64)

    def top(positions, score, count):
        return sorted(positions, key=lambda i: (-score[i], i))[:max(0, min(count, len(positions)))]

    l1_image, l1_text = np.abs(image).sum(1), np.abs(text).sum(1)
    pivots = [image[i] for i in top(range(len(image)), l1_image, min(image_pivots, k))]
    retained = top(range(len(image)), l1_image, min(image_pivots, k))
    pivots += [text[i] for i in top(range(len(text)), l1_text, text_pivots)]
    candidates = [i for i in range(len(image)) if i not in retained]
    norms = np.linalg.norm(image, axis=1)
    for offset, pivot in enumerate(pivots):
        remaining = k - len(retained)
        if remaining <= 0 or not candidates:
            break
        per_pivot = math.ceil(remaining / (len(pivots) - offset))
        similarity = {c: -float(image[c] @ pivot) / max(norms[c] * np.linalg.norm(pivot), 1e-8) for c in candidates}
        chosen = top(candidates, similarity, per_pivot)
        retained += chosen
        candidates = [c for c in candidates if c not in chosen]
    return sorted(retained)


@pytest.mark.parametrize("n", [576, 256])
@pytest.mark.parametrize("k", [4, 16, 64, 150])
def test_dart_embed_selects_what_edge_llm_selects(n, k):
    gen = torch.Generator().manual_seed(n + k)
    tokens = torch.randn(3, n, 48, generator=gen)
    tokens[:, 5] = tokens[:, 6]  # duplicates: at most one of them survives a tight budget
    prompt = torch.randn(3, 9, 48, generator=gen)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0  # a shorter prompt in the batch
    out = create_reducer("dart_embed")(tokens, prompt, None, budget=k, prompt_mask=mask)
    for b in range(3):
        expected = reference_select(tokens[b].numpy(), prompt[b][mask[b].bool()].numpy(), k)
        kept = int(out.num_kept[b])
        assert kept == k and out.keep_index[b, :kept].tolist() == expected
        torch.testing.assert_close(out.tokens[b, :kept], tokens[b, expected])  # unmerged rows


def test_dart_embed_without_a_prompt_in_its_space_uses_image_pivots_only():
    tokens = torch.randn(2, 100, 32, generator=torch.Generator().manual_seed(0))
    clip_query = torch.randn(2, 1, 16)  # another space (CLIP's): no text pivots
    out = create_reducer("dart_embed")(tokens, clip_query, None, budget=12)
    for b in range(2):
        assert out.keep_index[b, :12].tolist() == reference_select(tokens[b].numpy(), np.zeros((0, 32)), 12)


def test_dart_embed_padded_batch_reduces_each_image_as_if_alone():
    gen = torch.Generator().manual_seed(1)
    small, large = torch.randn(1, 40, 24, generator=gen), torch.randn(1, 64, 24, generator=gen)
    padded = torch.zeros(2, 64, 24)
    padded[0, :40], padded[1] = small[0], large[0]
    token_mask = torch.zeros(2, 64, dtype=torch.bool)
    token_mask[0, :40], token_mask[1] = True, True
    reducer = create_reducer("dart_embed")
    attn = torch.rand(2, 64)  # the prompt-agnostic fallback's input, which DART does not read
    together = reducer(padded, None, attn, budget=10, token_mask=token_mask)
    alone = (reducer(small, None, attn[:1, :40], budget=10), reducer(large, None, attn[1:], budget=10))
    for b, alone in enumerate(alone):
        assert together.keep_index[b].tolist() == alone.keep_index[0].tolist()
