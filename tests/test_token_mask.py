"""A padded batch of images with different token counts (``token_mask``) reduces each image as if
it were alone: the contract the multi-image Qwen2.5-VL graph rests on."""

from __future__ import annotations

import pytest
import torch
from conftest import METHODS

from par_export.reduce import PARConfig, create_reducer, reducer_class

MASKED = [m for m in METHODS if reducer_class(m).takes_token_mask]
SIZES = (37, 64, 50)  # real tokens per image; the batch is padded to 64


def padded_batch(sizes=SIZES, dim=24, seed=0):
    """Per image ``x [N_b, D]``, ``prompt [3, D]``, ``attn [N_b]``; and the padded batch
    ``[B, max N, D]`` whose padded rows copy the image's first token (as a gather with a clamped
    index does in the exported graph), with its ``token_mask [B, max N]``."""
    gen = torch.Generator().manual_seed(seed)
    images = [(torch.randn(n, dim, generator=gen), torch.randn(3, dim, generator=gen),
               torch.softmax(torch.randn(n, generator=gen) * 3, dim=-1)) for n in sizes]
    width = max(sizes)
    x = torch.stack([torch.cat([v, v[:1].expand(width - len(v), -1)]) for v, _, _ in images])
    attn = torch.stack([torch.cat([a, a[:1].expand(width - len(a))]) for _, _, a in images])
    prompt = torch.stack([p for _, p, _ in images])
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    return images, x, prompt, attn, mask


def check_same_as_alone(reducer, images, out, budget):
    for b, (v, p, a) in enumerate(images):
        alone = reducer(v[None], p[None], a[None], budget=budget)
        k = int(alone.num_kept[0])
        assert int(out.num_kept[b]) == k, f"image {b}: K {int(out.num_kept[b])} vs {k} alone"
        assert out.keep_index[b, :k].tolist() == alone.keep_index[0, :k].tolist(), f"image {b}: kept sets differ"
        assert bool((out.keep_index[b, k:] == -1).all())
        n = len(v)
        assert out.assignment[b, :n].tolist() == alone.assignment[0].tolist(), f"image {b}: assignment differs"
        assert bool((out.assignment[b, n:] == -1).all()), f"image {b}: a padded token was merged"
        torch.testing.assert_close(out.tokens[b, :k], alone.tokens[0, :k], rtol=1e-5, atol=1e-5)
        assert bool((out.tokens[b, k:] == 0).all())


@pytest.mark.parametrize("method", MASKED)
@pytest.mark.parametrize("budget", [1, 9, 37])
def test_masked_batch_equals_each_image_alone(method, budget):
    images, x, prompt, attn, mask = padded_batch()
    reducer = create_reducer(method)
    out = reducer(x, prompt, attn, budget=budget, token_mask=mask)
    check_same_as_alone(reducer, images, out, budget)


@pytest.mark.parametrize("method", [m for m in MASKED if reducer_class(m).supports_auto])
def test_masked_adaptive_budget_equals_each_image_alone(method):
    images, x, prompt, attn, mask = padded_batch(seed=1)
    reducer = create_reducer(method, config=PARConfig(alpha=0.5, k_min=4, k_max=40))
    out = reducer(x, prompt, attn, budget="auto", token_mask=mask)
    check_same_as_alone(reducer, images, out, "auto")
    assert len(set(out.num_kept.tolist())) > 1  # the images keep different K


@pytest.mark.parametrize("method", ["par", "visionzip_mean"])
def test_tensor_budget_is_capped_per_image(method):
    """A graph's budget input can exceed a small image's N: that image keeps all its tokens."""
    images, x, prompt, attn, mask = padded_batch()
    out = create_reducer(method)(x, prompt, attn, budget=torch.tensor(50), token_mask=mask)
    assert out.num_kept.tolist() == [37, 50, 50]
    assert out.keep_index[0, :37].tolist() == list(range(37))


def test_masked_prompt_fallback_mixes_with_prompted_images():
    """An image without a prompt falls back to attention, next to prompted ones, in one masked call."""
    images, x, prompt, attn, mask = padded_batch()
    has_prompt = torch.tensor([[True], [False], [True]]).expand(-1, 3)
    reducer = create_reducer("par")
    out = reducer(x, prompt, attn, budget=8, prompt_mask=has_prompt, token_mask=mask)
    for b, (v, p, a) in enumerate(images):
        alone = reducer(v[None], p[None], a[None], budget=8, prompt_mask=has_prompt[b:b + 1])
        assert out.keep_index[b].tolist() == alone.keep_index[0].tolist()


@pytest.mark.parametrize("method", ["pool", "prumerge_mean"])
def test_one_image_methods_refuse_a_mask(method):
    _, x, prompt, attn, mask = padded_batch(sizes=(64, 64, 64))
    with pytest.raises(ValueError, match="one image per call"):
        create_reducer(method)(x, prompt, attn, budget=16, token_mask=mask)


@pytest.mark.parametrize("bad, message", [
    (torch.ones(3, 10, dtype=torch.bool), r"token_mask must be a \[B, N\]"),
    (torch.full((3, 64), 0.5), "bool"),
    (torch.arange(64).unsqueeze(0).expand(3, -1) < torch.tensor([[1], [64], [64]]), "image 0 has 1 real token"),
])
def test_bad_mask_is_one_clear_error(bad, message):
    _, x, prompt, attn, _ = padded_batch()
    with pytest.raises(ValueError, match=message):
        create_reducer("par")(x, prompt, attn, budget=1, token_mask=bad)


def test_int_budget_above_an_images_tokens_names_it():
    _, x, prompt, attn, mask = padded_batch()
    with pytest.raises(ValueError, match="budget 40 exceeds image 0's 37 tokens"):
        create_reducer("par")(x, prompt, attn, budget=40, token_mask=mask)
