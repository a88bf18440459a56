"""Qwen3-VL: Qwen2.5-VL's per-image reduction plus DeepStack levels reduced alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from par_export.cli import main
from par_export.models.families import family_for
from par_export.models.qwen3_vl import ReducedQwen3VL
from par_export.reduce import PARConfig

QUESTIONS = ["what color is the circle ?", "how many stars are there ?"]
SIZES = [(80, 40), (30, 70)]  # width x height: two aspect ratios, two N


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from par_export.models.tiny import save_tiny_qwen3_vl

    return save_tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3") / "qwen3-vl")


@pytest.fixture(scope="module")
def batch(folder):
    inputs = family_for(folder).inputs(folder)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]
    return inputs.encode(QUESTIONS, images)


@pytest.fixture(scope="module", params=["par", "text_sim", "cls_attn"])
def model(request, folder):
    return ReducedQwen3VL.from_pretrained(folder, request.param, PARConfig(k_max=4096))


def args(batch):
    return batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"]


def test_budget_n_reproduces_the_stock_forward_generate_and_positions(model, batch):
    """K = N for both images (two aspect ratios): the reduced inputs give the stock logits at every
    position (DeepStack levels included; without them the logits differ), the stock positions,
    and the stock greedy tokens."""
    n = model.tokens_per_image(batch["image_grid_thw"])
    reduced = model.prepare_inputs(*args(batch), budget=n).model_inputs
    with torch.no_grad():
        model.model.model.rope_deltas = None
        stock = model.model(**batch).logits
        ours = model.model(**reduced).logits
        image = reduced["mm_encoder_outputs"]["image"]
        image.deepstack_features = [[torch.zeros_like(r) for r in level] for level in image.deepstack_features]
        without = model.model(**reduced).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], stock[mask], atol=1e-5, rtol=1e-4)
    assert (without[mask] - stock[mask]).abs().max() > 1e-3  # the DeepStack rows matter
    positions, _ = model.model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                                    batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    assert torch.equal(reduced["position_ids"][1:][:, mask], positions[:, mask])
    stock_ids = model.model.generate(**batch, max_new_tokens=5, do_sample=False)[:, batch["input_ids"].shape[1]:]
    assert torch.equal(model.generate(*args(batch), budget=n, max_new_tokens=5, do_sample=False), stock_ids)


def test_deepstack_rows_follow_the_kept_set_and_merge_weights(model, batch):
    """K < N: each DeepStack level's rows are that level's tokens merged into the same slots with the
    same weights as the main rows (computed here from the assignment and log weights directly)."""
    features = model.vision_features(batch["pixel_values"], batch["image_grid_thw"])
    outputs, rows = model.reduce_images(batch["pixel_values"], QUESTIONS, budget=6, features=features,
                                        image_grid_thw=batch["image_grid_thw"])
    for out, image_rows, (tokens, _, levels) in zip(outputs, rows, features):
        assert image_rows.shape == (1 + len(levels), 6, tokens.shape[-1])
        torch.testing.assert_close(image_rows[0], out.tokens[0, :6])
        for level, level_rows in zip(levels, image_rows[1:]):
            for slot in range(6):
                members = (out.assignment[0] == slot).nonzero().flatten()
                w = torch.softmax(out.log_weights[0, members], dim=0)
                torch.testing.assert_close(level_rows[slot], (w[:, None] * level[members]).sum(0), atol=1e-5,
                                           rtol=1e-4)
    reduced = model.prepare_inputs(*args(batch), budget=6).model_inputs
    image = reduced["mm_encoder_outputs"]["image"]
    assert [len(level) for level in image.deepstack_features] == [2, 2]  # 2 levels, 2 images
    assert all(r.shape[0] == 6 for level in image.deepstack_features for r in level)
    with torch.no_grad():
        assert torch.isfinite(model.model(**reduced).logits).all()


def test_export_and_the_onnx_llm_are_refused_in_one_line(folder, tmp_path, capsys):
    assert main(["export", "--model", str(folder), "--out", str(tmp_path / "onnx")]) == 2
    err = capsys.readouterr().err
    assert "qwen3_vl runs with PAR in PyTorch" in err and "export is not supported yet" in err
    assert not (tmp_path / "onnx").exists()
    with pytest.raises(ValueError, match="DeepStack"):
        ReducedQwen3VL.from_pretrained(folder).prompt_embeds({})


def test_procedural_eval_runs_qwen3_vl_in_pytorch(folder, tmp_path):
    import csv

    assert main(["eval", "--model", str(folder), "--methods", "par,text_sim", "--budgets", "8", "--n", "4",
                 "--batch", "2", "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert {r["method"] for r in rows} == {"full", "par", "text_sim"}
    assert all(float(r["mean_kept"]) == 8 for r in rows if r["method"] != "full")


def test_eval_default_methods_are_those_that_take_any_n(folder):
    from par_export.eval.run import default_methods

    methods = default_methods(folder)
    assert "par" in methods and "pool" not in methods and "prumerge_mean" not in methods
