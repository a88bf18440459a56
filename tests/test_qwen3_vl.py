"""Qwen3-VL: Qwen2.5-VL's per-image reduction plus DeepStack levels reduced alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cli_export_and_build, encode_random_images
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
    return encode_random_images(folder, QUESTIONS, SIZES)


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


def test_the_onnx_llm_is_refused_in_one_line(folder):
    with pytest.raises(ValueError, match="DeepStack"):
        ReducedQwen3VL.from_pretrained(folder).prompt_embeds({})


@pytest.mark.parametrize("grids", [[(1, 4, 4)], [(1, 10, 6), (1, 4, 18)], [(1, 24, 2), (1, 2, 2), (1, 16, 16)]])
def test_host_inputs_equal_transformers_helpers(folder, grids):
    """The numpy inputs an artifact computes equal transformers' own position ids and bilinear taps
    of the learned position grid (tiny: an 8 x 8 grid, patch grids smaller and larger than it)."""
    from transformers import vision_utils

    from par_export.models.layouts import qwen3_vision_inputs

    grid = torch.tensor(grids)
    visual = ReducedQwen3VL.from_pretrained(folder).visual
    ours = qwen3_vision_inputs({"spatial_merge_size": 2, "position_grid_side": visual.num_grid_per_side}, grid.numpy())
    index, weight = vision_utils.get_vision_interpolation_indices_and_weights(
        grid, num_grid_per_side=visual.num_grid_per_side, mode="bilinear", align_corners=True, spatial_merge_size=2)
    positions = vision_utils.get_vision_position_ids(grid, 2)
    np.testing.assert_array_equal(ours["vision_position_ids"], positions.numpy())
    np.testing.assert_array_equal(ours["pos_embed_index"], index.numpy())
    np.testing.assert_allclose(ours["pos_embed_weight"], weight.numpy(), atol=1e-6)
    assert ours["cu_seqlens"].tolist() == [0, *np.cumsum([t * h * w for t, h, w in grids]).tolist()]


def graph_inputs(model, batch) -> dict:
    from par_export.models.layouts import qwen3_vision_inputs

    geometry = {"spatial_merge_size": 2, "position_grid_side": model.visual.num_grid_per_side}
    feed = qwen3_vision_inputs(geometry, batch["image_grid_thw"].numpy())
    return {"pixel_values": batch["pixel_values"], **{k: torch.from_numpy(v) for k, v in feed.items()}}


@pytest.mark.parametrize("method", ["par", "text_sim", "random"])
def test_graph_with_both_images_equals_the_adapter_with_its_deepstack_rows(folder, batch, method):
    """One call of the export graph with both images (different N, the second without a prompt)
    gives each image's K, kept indices, main rows and DeepStack rows of the adapter, whose tower is
    the stock one."""
    from par_export.models.qwen3_vl import Qwen3VisionParGraph
    from par_export.reduce.retrieval import pool_prompt

    model = ReducedQwen3VL.from_pretrained(folder, method, PARConfig(k_max=16))
    graph = Qwen3VisionParGraph(model, "input").eval()
    query = pool_prompt(*model.query_encoder([QUESTIONS[0], ""]))[0]  # zeros for the second image
    with torch.no_grad():
        embeds, deepstack, num_kept, keep_index = graph(**graph_inputs(model, batch), query_embeds=query,
                                                        budget=torch.tensor(5))
    outputs, rows = model.reduce_images(batch["pixel_values"], [QUESTIONS[0], ""], 5,
                                        image_grid_thw=batch["image_grid_thw"])
    assert deepstack.shape == (2, 2, 16, embeds.shape[-1])
    for i, (out, row) in enumerate(zip(outputs, rows)):
        assert int(num_kept[i]) == 5 and keep_index[i, :5].tolist() == out.keep_index[0, :5].tolist()
        # summation order (masked attention over all patches vs the stock per-image attention): ~1e-5
        torch.testing.assert_close(embeds[i, :5], row[0], atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(deepstack[:, i, :5], row[1:], atol=5e-5, rtol=1e-4)
        assert not deepstack[:, i, 5:].any()  # zero past K, as the main rows


@pytest.fixture(scope="module")
def k16_artifact(folder, tmp_path_factory):
    """``export --budget 16 --k-max 16`` + ``build`` (fp32, ONNX Runtime, verified) through the CLI."""
    return cli_export_and_build(folder, tmp_path_factory.mktemp("qwen3-k16"), "--budget", "16", "--k-max", "16")[1]


def test_export_build_verify_and_run_through_main(folder, k16_artifact, tmp_path, capsys):
    """``export``, ``build`` (verified against PyTorch) and ``run``: the artifact's rows for an image
    of each aspect ratio are the adapter's, DeepStack levels included (``[1 + L, K, D]``)."""
    from par_export.engine.run import run_image

    art = k16_artifact
    capsys.readouterr()
    assert main(["verify", str(art)]) == 0
    assert "verify (fp32): PASSED" in capsys.readouterr().out
    reference = ReducedQwen3VL.from_pretrained(folder, "par", PARConfig(k_max=16))
    inputs = family_for(folder).inputs(folder)
    rng = np.random.default_rng(5)
    for w, h in SIZES:
        path = tmp_path / f"{w}x{h}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        enc = inputs.encode([QUESTIONS[1]], [Image.open(path).convert("RGB")])
        outputs, rows = reference.reduce_images(enc["pixel_values"], [QUESTIONS[1]], 6,
                                                image_grid_thw=enc["image_grid_thw"])
        result = run_image(art, path, QUESTIONS[1], budget=6)
        assert result["keep_index"] == outputs[0].keep_index[0, :6].tolist()
        np.testing.assert_allclose(result["image_embeds"], rows[0].numpy(), atol=1e-4)
        assert main(["run", str(art), "--image", str(path), "--prompt", QUESTIONS[1], "--budget", "6"]) == 0
        n = reference.tokens_per_image(enc["image_grid_thw"])[0]
        assert f"kept 6/{n} tokens" in capsys.readouterr().out


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


def test_chat_compare_full_and_eval_through_the_artifact(folder, k16_artifact, tmp_path, capsys):
    """chat on a Qwen3-VL artifact: main and DeepStack rows from the graph, positions from their
    indices; with K = N (a 32 x 32 image: 16 merged tokens) the reduced answer is the full one.
    ``eval --backend ART`` gives the first-token answers of ``--backend torch``; emit refuses in
    one line (the DeepStack rows are not in its outputs)."""
    from par_export.eval.vqa import evaluate

    image = tmp_path / "square.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    capsys.readouterr()
    assert main(["chat", "--model", str(folder), "--artifact", str(k16_artifact), "--image", str(image), "--prompt",
                 QUESTIONS[0], "--budget", "16", "--compare-full", "--max-new-tokens", "6", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    answer = next(x for x in lines if x.startswith("answer: "))[len("answer: "):]
    assert answer == next(x for x in lines if x.startswith("full-context answer: "))[len("full-context answer: "):]
    assert any(x.startswith("reduced (par, K=16)") for x in lines)

    seeds = dict(split="val", n=4, batch=2, progress=False)
    torch_run = evaluate(folder, None, ["par"], [8], **seeds)
    artifact_run = evaluate(folder, None, ["par"], [8], artifacts={("par", 8): k16_artifact}, **seeds)
    assert torch_run["tallies"][("par", 8)].predictions == artifact_run["tallies"][("par", 8)].predictions
    assert artifact_run["tallies"][("par", 8)].kept == [8] * 4

    assert main(["emit", str(k16_artifact), "--model", str(folder), "--image", str(image), "--prompt",
                 QUESTIONS[0], "--runtime", "edge-llm", "--out", str(tmp_path / "emit")]) == 2
    assert "DeepStack" in capsys.readouterr().err and not (tmp_path / "emit").exists()
