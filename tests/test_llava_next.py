"""LLaVA-NeXT (anyres): a reducer over each image's packed sequence, newline rows handled explicitly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cli_export_and_build
from PIL import Image

from par_export.cli import main
from par_export.models.families import family_for
from par_export.models.llava_next import NEWLINE, ReducedLlavaNext
from par_export.reduce import PARConfig

QUESTIONS = ["what color is the circle ?", "how many stars are there ?"]


@pytest.fixture(scope="module")
def next_folder(tmp_path_factory):
    from par_export.models.tiny import save_tiny_llava_next

    return save_tiny_llava_next(tmp_path_factory.mktemp("next") / "llava-next")


@pytest.fixture(scope="module")
def batch(next_folder):
    """Two images of different aspect ratios (landscape 2:1, portrait 3:7) through the stock processor."""
    from transformers import LlavaNextProcessor

    processor = LlavaNextProcessor.from_pretrained(next_folder, local_files_only=True)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(80, 40), (30, 70)]]
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                         {"type": "text", "text": q}]}],
                                           add_generation_prompt=True) for q in QUESTIONS]
    return processor(images=images, text=texts, return_tensors="pt", padding=True, padding_side="left")


@pytest.fixture(scope="module", params=["par", "text_sim", "cls_attn"])
def model(request, next_folder):
    return ReducedLlavaNext.from_pretrained(next_folder, request.param, PARConfig(k_max=4096, space="llm"))


def test_family_is_picked_from_model_type(next_folder):
    assert family_for(next_folder).adapter is ReducedLlavaNext


def test_budget_n_reproduces_stock_generate_token_for_token(model, batch):
    features = model.vision_features(batch["pixel_values"], batch["image_sizes"])
    n = [tokens.shape[0] for tokens, _, _ in features]
    assert n[0] != n[1]  # the two aspect ratios give different N
    stock = model.model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=0)
    stock = stock[:, batch["input_ids"].shape[1]:]
    ours = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], budget=n,
                          image_sizes=batch["image_sizes"], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(stock, ours)


def test_full_budget_rows_equal_the_stock_packed_features(model, batch):
    stock = model.model.model.get_image_features(batch["pixel_values"], batch["image_sizes"]).pooler_output
    features = model.vision_features(batch["pixel_values"], batch["image_sizes"])
    reduced = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                   budget=[t.shape[0] for t, _, _ in features], image_sizes=batch["image_sizes"])
    for ours, theirs in zip(reduced.image_features, stock):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 8])
def test_reduced_sequence_keeps_newlines_only_after_rows_with_kept_tokens(model, batch, k):
    reduced = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], budget=k,
                                   image_sizes=batch["image_sizes"])
    features = model.vision_features(batch["pixel_values"], batch["image_sizes"])
    newline = model.model.model.image_newline
    ids = reduced.model_inputs["input_ids"]
    for i, ((tokens, _, layout), rows, out) in enumerate(zip(features, reduced.image_features, reduced.reduction)):
        kept = set(out.keep_index[0, :int(out.num_kept[0])].tolist())
        assert len(kept) == k
        expected_newlines, row_has = 0, False
        position = 0
        for entry in layout.order.tolist():
            if entry == NEWLINE:
                expected_newlines += row_has
                row_has = False
            else:
                row_has = row_has or position in kept
                position += 1
        is_newline = (rows == newline).all(dim=-1)
        assert int(is_newline.sum()) == expected_newlines and rows.shape[0] == k + expected_newlines
        assert int((ids[i] == model.model.config.image_token_id).sum()) == rows.shape[0]
        if k == 1:  # one kept token: every other grid row lost its newline
            assert expected_newlines <= 1 < int((layout.order == NEWLINE).sum())


def test_budget_above_one_images_n_names_it(model, batch):
    features = model.vision_features(batch["pixel_values"], batch["image_sizes"])
    too_many = max(t.shape[0] for t, _, _ in features)
    small = int(np.argmin([t.shape[0] for t, _, _ in features]))
    with pytest.raises(ValueError, match=f"image {small}: budget {too_many} is outside"):
        model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], budget=too_many,
                             image_sizes=batch["image_sizes"])


def test_export_build_verify_and_run_equal_the_adapter_fed_by_the_processor(next_folder, batch, tmp_path, capsys):
    """One graph for every image size: `par-export run` on images of two aspect ratios gives the
    kept indices and the rows (with their newlines) of ReducedLlavaNext fed by LlavaNextProcessor."""
    from transformers import LlavaNextProcessor

    from par_export.engine.run import run_image

    onnx, art = cli_export_and_build(next_folder, tmp_path, "--budget", "8")
    assert "verify (fp32): PASSED" in capsys.readouterr().out
    assert main(["verify", str(art)]) == 0

    processor = LlavaNextProcessor.from_pretrained(next_folder, local_files_only=True)
    reference = ReducedLlavaNext.from_pretrained(next_folder, "par", PARConfig(k_max=16))
    rng = np.random.default_rng(1)
    for w, h in [(80, 40), (30, 70)]:
        path = tmp_path / f"{w}x{h}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                          {"type": "text", "text": QUESTIONS[0]}]}],
                                             add_generation_prompt=True)
        enc = processor(images=[Image.open(path).convert("RGB")], text=[text], return_tensors="pt")
        expected = reference.prepare_inputs(enc["input_ids"], enc["attention_mask"], enc["pixel_values"],
                                            prompts=[QUESTIONS[0]], budget=8, image_sizes=enc["image_sizes"])
        out = expected.reduction[0]
        result = run_image(art, path, QUESTIONS[0], budget=8)
        assert result["keep_index"] == out.keep_index[0, :int(out.num_kept[0])].tolist()
        np.testing.assert_allclose(result["image_embeds"], expected.image_features[0].numpy(), atol=1e-5)
        assert main(["run", str(art), "--image", str(path), "--prompt", QUESTIONS[0], "--budget", "8",
                     "--heatmap", str(tmp_path / "kept.png")]) == 0
        n = reference.vision_features(enc["pixel_values"], enc["image_sizes"])[0][0].shape[0]
        assert f"kept 8/{n} tokens" in capsys.readouterr().out


def test_procedural_eval_runs_llava_next_in_pytorch(next_folder, tmp_path, capsys):
    """The procedural eval reduces LLaVA-NeXT's packed tokens in PyTorch (the LLM pipeline, which
    --backend needs, does not serve it yet); a budget above an image's N is refused."""
    import csv

    assert main(["eval", "--model", str(next_folder), "--n", "4", "--batch", "2", "--budgets", "4,8",
                 "--methods", "par,random", "--out", str(tmp_path / "eval")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "eval" / "results.csv")))
    assert {(r["method"], r["budget"]) for r in rows} >= {("par", "4"), ("par", "8"), ("random", "8")}
    assert all(float(r["mean_kept"]) == int(r["budget"]) for r in rows if r["method"] != "full")
    assert main(["eval", "--model", str(next_folder), "--n", "4", "--out", str(tmp_path / "eval2")]) == 2
    assert "above the 36 tokens of an image" in capsys.readouterr().err


def test_image_token_runs_must_match_each_images_layout(model, batch):
    ids, mask = batch["input_ids"].clone(), batch["attention_mask"]
    first = int((ids[0] == model.model.config.image_token_id).nonzero()[0])
    ids[0, first] = 5  # one image token fewer than the processor wrote
    with pytest.raises(ValueError, match="image 0: a run of"):
        model.prepare_inputs(ids, mask, batch["pixel_values"], budget=8, image_sizes=batch["image_sizes"])


def test_chat_on_a_llava_next_artifact(next_folder, tmp_path, capsys):
    """Rows with their newlines from the graph, placed in the prompt; the full run alongside."""
    onnx, art = cli_export_and_build(next_folder, tmp_path, "--budget", "8")
    image = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 80, 3), dtype=np.uint8)).save(image)
    capsys.readouterr()
    assert main(["chat", "--model", str(next_folder), "--artifact", str(art), "--image", str(image), "--prompt",
                 QUESTIONS[0], "--budget", "8", "--compare-full", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "reduced (par, K=8)" in out and "full-context answer: " in out
    reduced = next(x for x in out.splitlines() if x.startswith("reduced"))
    full = next(x for x in out.splitlines() if x.startswith("full "))
    assert int(reduced.split()[4]) < int(full.split()[2])  # fewer context tokens than the full prompt
