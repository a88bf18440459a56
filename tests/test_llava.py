"""Reducers inside transformers' LlavaForConditionalGeneration, on tiny random-weight models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import METHODS

from par_export.models.llava import ReducedLlava, left_pad, resize_image_runs
from par_export.models.loading import ModelFolderError
from par_export.reduce import PARConfig

QUESTIONS = ["what color is the circle ?", "is there a red square on the left ?", "how many star are there ?"]


@pytest.fixture(scope="module")
def llava(tiny_folders):
    llava_dir, clip_dir = tiny_folders
    return ReducedLlava.from_pretrained(llava_dir, method="par", clip_path=clip_dir)


def chat_batch(llava: ReducedLlava, questions, seed=0):
    """Left-padded ``input_ids``/``attention_mask`` with one expanded <image> each, and pixels."""
    tok, image_id, n = llava.tokenizer, llava.model.config.image_token_id, llava.tokens_per_image
    rows = []
    for q in questions:
        before = tok("USER :")["input_ids"]
        after = tok(f"{q} ASSISTANT :", add_special_tokens=False)["input_ids"]
        rows.append(before + [image_id] * n + after)
    ids, mask = left_pad(rows, 0)
    gen = torch.Generator().manual_seed(seed)
    return ids, mask, torch.randn(len(rows), 3, 32, 32, generator=gen)


def greedy(model, **inputs):
    return model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)


def test_full_budget_reproduces_unreduced_model(llava):
    ids, mask, pixels = chat_batch(llava, QUESTIONS[:1])
    batch = llava.prepare_inputs(ids, mask, pixels, budget=llava.tokens_per_image)
    assert batch.reduction.keep_index[0].tolist() == list(range(llava.tokens_per_image))
    with torch.no_grad():
        reference = llava.model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
        reduced = llava.model(**batch.model_inputs).logits
    torch.testing.assert_close(reduced, reference, rtol=1e-4, atol=1e-5)
    assert torch.equal(greedy(llava.model, **batch.model_inputs),
                       greedy(llava.model, input_ids=ids, attention_mask=mask, pixel_values=pixels))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_generates_batched_with_k_image_tokens(tiny_folders, method):
    llava_dir, clip_dir = tiny_folders
    model = ReducedLlava.from_pretrained(llava_dir, method=method, clip_path=clip_dir)
    ids, mask, pixels = chat_batch(model, QUESTIONS[:2])
    batch = model.prepare_inputs(ids, mask, pixels, budget=16)
    image_tokens = (batch.model_inputs["input_ids"] == model.model.config.image_token_id).sum(dim=1)
    assert image_tokens.tolist() == batch.reduction.num_kept.tolist()
    assert bool((batch.reduction.num_kept <= 16).all())
    text_tokens = (mask.sum(dim=1) - model.tokens_per_image).tolist()
    assert batch.model_inputs["attention_mask"].sum(dim=1).tolist() == [
        t + k for t, k in zip(text_tokens, batch.reduction.num_kept.tolist())
    ]
    new = model.generate(ids, mask, pixels, budget=16, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert new.shape == (2, 4)


def test_adaptive_k_differs_per_image_and_batch_equals_single(llava):
    ids, mask, pixels = chat_batch(llava, QUESTIONS, seed=3)
    pixels[1] = 0.0  # a flat image with one bright square, and a gradient: unlike relevance spreads
    pixels[1, :, 4:12, 4:12] = 3.0
    pixels[2] = torch.linspace(-2, 2, 32).view(1, 1, 32)
    batch = llava.prepare_inputs(ids, mask, pixels, budget="auto")
    counts = batch.reduction.num_kept.tolist()
    assert len(set(counts)) > 1, f"adaptive K should differ across these images, got {counts}"
    together = greedy(llava.model, **batch.model_inputs)[:, batch.model_inputs["input_ids"].shape[1] :]
    for b in range(len(QUESTIONS)):
        single = llava.prepare_inputs(ids[b : b + 1], mask[b : b + 1], pixels[b : b + 1], budget="auto")
        assert single.reduction.num_kept.tolist() == [counts[b]]
        alone = greedy(llava.model, **single.model_inputs)[:, single.model_inputs["input_ids"].shape[1] :]
        assert torch.equal(alone[0], together[b])


def test_prompts_are_decoded_and_rewritten(llava):
    ids, mask, pixels = chat_batch(llava, QUESTIONS[:1])
    batch = llava.prepare_inputs(ids, mask, pixels, budget=8)
    assert batch.prompts == ["USER : what color is the circle ? ASSISTANT :"]
    assert llava.query_encoder.queries(batch.prompts) == ["a photo of what color is the circle ?"]


def test_prompt_changes_what_is_kept(tiny_folders):
    # LLM space: mean word embeddings tell these prompts apart even with random weights
    # (a random CLIP text tower pools near-identical EOS states for equal-length prompts).
    llava = ReducedLlava.from_pretrained(tiny_folders[0], config=PARConfig(space="llm"))
    ids, mask, pixels = chat_batch(llava, QUESTIONS[:1])
    kept = {
        tuple(llava.prepare_inputs(ids, mask, pixels, prompts=[p], budget=8).reduction.keep_index[0].tolist())
        for p in ["red circle top left", "blue star bottom right", "yellow square middle"]
    }
    assert len(kept) > 1


def test_empty_prompt_falls_back_to_cls_attention(llava):
    ids, mask, pixels = chat_batch(llava, QUESTIONS[:1])
    empty = llava.prepare_inputs(ids, mask, pixels, prompts=["USER: <image> ASSISTANT:"], budget=8)
    tokens, attn = llava.vision_features(pixels)
    reference = llava.reducer(tokens, None, attn, budget=8)
    assert torch.equal(empty.reduction.keep_index, reference.keep_index)


def test_long_prompt_is_truncated_with_warning(llava):
    ids, mask, pixels = chat_batch(llava, QUESTIONS[:1])
    with pytest.warns(UserWarning, match="truncated"):
        llava.prepare_inputs(ids, mask, pixels, prompts=["red " * 100], budget=8)


def test_without_clip_falls_back_to_llm_space(tiny_folders):
    llava_dir, _ = tiny_folders
    with pytest.warns(UserWarning, match="falling back to space=llm"):
        model = ReducedLlava.from_pretrained(llava_dir, method="par")
    assert model.config.space == "llm"
    ids, mask, pixels = chat_batch(model, QUESTIONS[:2])
    new = model.generate(ids, mask, pixels, budget="auto", max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    assert new.shape == (2, 3)


def test_llm_space_config_needs_no_clip(tiny_folders):
    llava_dir, _ = tiny_folders
    model = ReducedLlava.from_pretrained(llava_dir, config=PARConfig(space="llm"))
    ids, mask, pixels = chat_batch(model, QUESTIONS[:1])
    assert model.prepare_inputs(ids, mask, pixels, budget=8).reduction.num_kept.tolist() == [8]


def test_llm_space_projects_every_token_once_and_reduces_the_projected_rows(tiny_folders):
    model = ReducedLlava.from_pretrained(tiny_folders[0], config=PARConfig(space="llm"))
    ids, mask, pixels = chat_batch(model, QUESTIONS[:2])
    rows_seen = []
    hook = model.projector.register_forward_hook(lambda module, args, out: rows_seen.append(args[0].shape[:-1]))
    try:
        batch = model.prepare_inputs(ids, mask, pixels, budget=8)
    finally:
        hook.remove()
    n = model.tokens_per_image
    assert rows_seen == [torch.Size([2, n])]  # one call, all N tokens of both images, no second pass for K
    d_llm = model.model.config.text_config.hidden_size
    assert batch.reduction.tokens.shape[-1] == d_llm  # merged in the LLM's space
    # the rows are the reducer's output on the projected tokens (not the projection of a merge),
    # clustered on the tower's tokens (issue 31: a quarter of the N x N cost at 1024 / 4096)
    tokens, attn = model.vision_features(pixels)
    embedding, prompt_mask = model.query_encoder(batch.prompts)
    expected = model.reducer(model.projector(tokens), embedding, attn, budget=8, prompt_mask=prompt_mask,
                             cluster_tokens=tokens)
    assert torch.equal(batch.reduction.keep_index, expected.keep_index)
    for image, features in enumerate(batch.image_features):
        torch.testing.assert_close(features, expected.tokens[image, :8])
    on_rows = model.reducer(model.projector(tokens), embedding, attn, budget=8, prompt_mask=prompt_mask)
    assert not torch.equal(on_rows.keep_index, expected.keep_index)  # the clustering input is the tower's


def test_placeholder_mismatch_errors(llava):
    ids, mask, pixels = chat_batch(llava, QUESTIONS[:2])
    with pytest.raises(ValueError, match="1 images were given but input_ids hold 2 image placeholders"):
        llava.prepare_inputs(ids, mask, pixels[:1], budget=8)
    short = ids.clone()
    short[0, (short[0] == llava.model.config.image_token_id).nonzero()[0]] = 5
    with pytest.raises(ValueError, match="expected 64 per image"):
        llava.prepare_inputs(short, mask, pixels, budget=8)


def test_resize_image_runs_left_pads():
    ids = torch.tensor([[0, 0, 7, 9, 9, 9, 9, 8], [7, 9, 9, 9, 9, 8, 8, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
    new_ids, new_mask = resize_image_runs(ids, mask, 9, 4, [1, 3], pad_token_id=0)
    assert new_ids.tolist() == [[0, 0, 0, 0, 7, 9, 8], [7, 9, 9, 9, 8, 8, 8]]
    assert new_mask.tolist() == [[0, 0, 0, 0, 1, 1, 1], [1] * 7]


def test_loading_refuses_bad_folders(tmp_path, tiny_folders):
    llava_dir, clip_dir = tiny_folders
    with pytest.raises(ModelFolderError, match="not a folder"):
        ReducedLlava.from_pretrained(tmp_path / "missing")
    with pytest.raises(ModelFolderError, match="model_type is 'clip'"):
        ReducedLlava.from_pretrained(clip_dir)
    pickled = tmp_path / "pickled"
    shutil.copytree(llava_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelFolderError, match="pickled weights are not loaded"):
        ReducedLlava.from_pretrained(pickled)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        ReducedLlava.from_pretrained(broken)
    assert json.loads((llava_dir / "config.json").read_text())["model_type"] == "llava"
