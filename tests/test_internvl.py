"""InternVL (transformers' "-hf" layout): one image's tokens over all its tiles reduced together."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from conftest import cli_export_and_build, encode_random_images
from PIL import Image

from par_export.cli import main
from par_export.models.families import family_for
from par_export.models.internvl import ReducedInternVL
from par_export.reduce import PARConfig

QUESTIONS = ["what color is the circle ?", "how many stars are there ?"]
SIZES = [(96, 32), (30, 70)]  # width x height: 3 tiles + thumbnail, 2 tiles + thumbnail


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from par_export.models.tiny import save_tiny_internvl

    return save_tiny_internvl(tmp_path_factory.mktemp("internvl") / "internvl")


@pytest.fixture(scope="module")
def batch(folder):
    return encode_random_images(folder, QUESTIONS, SIZES)


def stock_inputs(batch) -> dict:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}


def test_processor_gives_each_image_its_tiles_and_tokens(folder, batch):
    """The processor's runs: tiles x 16 tokens per image, the thumbnail counted, as the model reads them."""
    model = ReducedInternVL.from_pretrained(folder)
    assert model.tiles_per_image(batch["input_ids"], batch["attention_mask"]) == [4, 3]
    assert batch["pixel_values"].shape[0] == 7 and "num_patches" not in batch  # as InternVLProcessor gives them


@pytest.mark.parametrize("method", ["par", "text_sim", "cls_attn"])
def test_budget_n_reproduces_the_stock_logits_and_generate(folder, batch, method):
    """K = N for both images (two aspect ratios, different tile counts): the stock logits at every
    position and the stock greedy tokens; the same rows in another order change the logits."""
    model = ReducedInternVL.from_pretrained(folder, method, PARConfig(k_max=4096))
    n = [16 * t for t in model.tiles_per_image(batch["input_ids"], batch["attention_mask"])]
    reduced = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], budget=n)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        stock = model.model(**stock_inputs(batch)).logits
        ours = model.model(**reduced.model_inputs).logits
        rows = reduced.model_inputs["mm_encoder_outputs"]["image"].pooler_output
        reduced.model_inputs["mm_encoder_outputs"]["image"].pooler_output = rows.flip(0)
        shuffled = model.model(**reduced.model_inputs).logits
    torch.testing.assert_close(ours[mask], stock[mask], atol=1e-5, rtol=1e-4)
    assert (shuffled[mask] - stock[mask]).abs().max() > 1e-4
    expected = model.model.generate(**stock_inputs(batch), max_new_tokens=5, do_sample=False)
    ids = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], budget=n,
                         max_new_tokens=5, do_sample=False)
    assert torch.equal(ids, expected[:, batch["input_ids"].shape[1]:])


def test_reduced_runs_hold_k_rows_and_the_cls_attention_is_per_token(folder, batch):
    model = ReducedInternVL.from_pretrained(folder, "par", PARConfig(k_max=64))
    reduced = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], prompts=QUESTIONS,
                                   budget=10)
    image_id = model.model.config.image_token_id
    assert (reduced.model_inputs["input_ids"] == image_id).sum(dim=1).tolist() == [10, 10]
    tokens, attn = model.vision_features(batch["pixel_values"])
    assert tokens.shape[:2] == attn.shape == (7, 16)
    assert bool(((attn.sum(-1) > 0) & (attn.sum(-1) < 1)).all())  # the CLS row without its self-weight
    with torch.no_grad():
        assert torch.isfinite(model.model(**reduced.model_inputs).logits).all()


def test_clip_is_refused(folder, tmp_path):
    with pytest.raises(ValueError, match="no CLIP folder"):
        ReducedInternVL.from_pretrained(folder, clip_path=tmp_path)


@pytest.fixture(scope="module")
def k16_artifact(folder, tmp_path_factory):
    return cli_export_and_build(folder, tmp_path_factory.mktemp("internvl-k16"), "--budget", "16", "--k-max", "16")[1]


def test_export_build_verify_and_run_equal_the_adapter(folder, k16_artifact, tmp_path, capsys):
    """export, build (verified), run: for an image of each shape the artifact keeps the adapter's
    tokens and rows, over all its tiles."""
    from par_export.engine.run import run_image

    reference = ReducedInternVL.from_pretrained(folder, "par", PARConfig(k_max=16))
    inputs = family_for(folder).inputs(folder)
    rng = np.random.default_rng(4)
    for w, h in SIZES:
        path = tmp_path / f"{w}x{h}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        enc = inputs.encode([QUESTIONS[1]], [Image.open(path).convert("RGB")])
        expected = reference.prepare_inputs(enc["input_ids"], enc["attention_mask"], enc["pixel_values"],
                                            prompts=[QUESTIONS[1]], budget=12)
        result = run_image(k16_artifact, path, QUESTIONS[1], budget=12)
        assert result["keep_index"] == expected.reduction[0].keep_index[0, :12].tolist()
        assert result["tokens_per_image"] == 16 * enc["pixel_values"].shape[0]
        np.testing.assert_allclose(result["image_embeds"], expected.image_features[0].numpy(), atol=1e-4)
        capsys.readouterr()
        assert main(["run", str(k16_artifact), "--image", str(path), "--prompt", QUESTIONS[1], "--budget", "12"]) == 0
        assert f"kept 12/{result['tokens_per_image']} tokens" in capsys.readouterr().out


def test_chat_and_eval_through_the_artifact(folder, k16_artifact, tmp_path, capsys):
    """chat with K = N (a 32 x 32 image: one tile, 16 tokens) answers as the full model; eval through
    the artifact gives the PyTorch adapter's first-token answers; downsample keeps whole tiles."""
    from par_export.eval.vqa import evaluate

    image = tmp_path / "square.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    capsys.readouterr()
    assert main(["chat", "--model", str(folder), "--artifact", str(k16_artifact), "--image", str(image), "--prompt",
                 QUESTIONS[0], "--budget", "16", "--compare-full", "--max-new-tokens", "6", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    answer = next(x for x in lines if x.startswith("answer: "))
    assert answer[len("answer: "):] == next(x for x in lines if x.startswith("full-context answer: "))[21:]

    seeds = dict(split="val", n=4, batch=2, progress=False)
    torch_run = evaluate(folder, None, ["par"], [8], **seeds)
    artifact_run = evaluate(folder, None, ["par"], [8], artifacts={("par", 8): k16_artifact}, **seeds)
    assert torch_run["tallies"][("par", 8)].predictions == artifact_run["tallies"][("par", 8)].predictions
    assert main(["eval", "--model", str(folder), "--methods", "par,downsample", "--budgets", "16,48", "--n", "4",
                 "--batch", "2", "--out", str(tmp_path / "eval")]) == 0
    rows = {(r["method"], r["budget"]): r for r in csv.DictReader(open(tmp_path / "eval" / "results.csv"))}
    for budget in ("16", "48"):
        kept = float(rows[("downsample", budget)]["mean_kept"])
        assert kept <= int(budget) and (kept * 4) % 16 == 0  # whole tiles of 16 tokens, 4 images
    assert main(["eval", "--model", str(folder), "--methods", "downsample", "--budgets", "8", "--n", "2",
                 "--out", str(tmp_path / "eval2")]) == 2
    assert "below one tile's 16 tokens" in capsys.readouterr().err
    assert main(["emit", str(k16_artifact), "--model", str(folder), "--image", str(image), "--prompt", QUESTIONS[0],
                 "--runtime", "edge-llm", "--out", str(tmp_path / "emit")]) == 2
    assert "not for internvl yet" in capsys.readouterr().err and not (tmp_path / "emit").exists()


def test_eval_on_jsonl_keeps_min_of_k_and_each_images_tokens(folder, tmp_path):
    """JSONL eval: K = 48 per image over all its tiles (not capped at one tile's 16 tokens)."""
    import json

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(9)
    with open(tmp_path / "q.jsonl", "w") as f:
        for i, (w, h) in enumerate(SIZES):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
            f.write(json.dumps({"question_id": i, "image": f"{i}.png", "text": QUESTIONS[0], "answer": "red"}) + "\n")
    assert main(["eval", "--model", str(folder), "--data", str(tmp_path / "q.jsonl"), "--images", str(images),
                 "--methods", "par", "--budgets", "48", "--out", str(tmp_path / "out")]) == 0
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "out" / "results.csv"))}
    assert float(rows["full"]["mean_kept"]) == (64 + 48) / 2  # 4 and 3 tiles of 16 tokens
    assert float(rows["par"]["mean_kept"]) == 48
