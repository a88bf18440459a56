"""Real-size geometry on this CPU (slow), random weights, LLMs cut to 2 layers: LLaVA-1.5-7B and
LLaVA-NeXT-7B (CLIP-L/336 tower and projector at full size), Qwen2.5-VL-3B, Qwen3-VL-2B and -4B,
InternVL3-1B and -2B (their vision towers at full size) export, build, verify and run."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import onnx as onnx_lib
import pytest
import torch
from PIL import Image

from par_export.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def free_disk(tmp_path):
    """Each test writes 8-17 GB (checkpoint, graphs, artifact): removed when it ends, pass or fail,
    so the set fits the disk of a CI machine."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_llava_1_5_7b_geometry_exports_builds_verifies_and_runs(tmp_path, capsys):
    from transformers import LlavaProcessor

    from par_export.models.geometries import save_llava_geometry
    from par_export.models.llava import ReducedLlava
    from par_export.reduce import PARConfig

    llava, clip = save_llava_geometry(tmp_path / "model")
    onnx, art = tmp_path / "onnx", tmp_path / "art"
    assert main(["export", "--model", str(llava), "--clip", str(clip), "--out", str(onnx), "--budget", "64"]) == 0
    assert (onnx / "vision_par.onnx.data").stat().st_size > 1e9  # CLIP-L/336 weights outside the protobuf
    assert main(["build", str(onnx), "--precision", "fp32", "--backend", "onnxruntime", "--out", str(art)]) == 0
    assert "verify (fp32): PASSED" in capsys.readouterr().out

    image = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)).save(image)
    prompt = "what color is the circle ?"
    assert main(["run", str(art), "--image", str(image), "--prompt", prompt, "--budget", "64", "--heatmap",
                 str(tmp_path / "kept.png")]) == 0
    printed = capsys.readouterr().out
    processor = LlavaProcessor.from_pretrained(llava, local_files_only=True)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                                                      {"type": "text", "text": prompt}]}],
                                         add_generation_prompt=True)
    enc = processor(images=[Image.open(image).convert("RGB")], text=[text], return_tensors="pt")
    reference = ReducedLlava.from_pretrained(llava, "par", PARConfig(), clip_path=clip)
    batch = reference.prepare_inputs(enc["input_ids"], enc["attention_mask"], enc["pixel_values"], prompts=[prompt],
                                     budget=64)
    kept = batch.reduction.keep_index[0, :64].tolist()
    assert "kept 64/576 tokens" in printed and f"first kept indices {kept[:12]}" in printed

    # fp16 at this size: routing near-ties move a few merged rows, which the verify rule allows;
    # slot-wise indices with every row within 5% failed this build
    assert main(["build", str(onnx), "--fp16", "--backend", "onnxruntime", "--out", str(tmp_path / "art16")]) == 0
    assert "verify (fp16): PASSED" in capsys.readouterr().out
    # a planted real error fails it: the tower's pre-LayerNorm epsilon 1.0 instead of 1e-5
    planted = tmp_path / "planted"
    shutil.copytree(onnx, planted)
    graph = onnx_lib.load(str(onnx / "vision_par.onnx"), load_external_data=False)
    norm = next(n for n in graph.graph.node if n.op_type == "LayerNormalization" and "pre_layrnorm" in n.name)
    next(a for a in norm.attribute if a.name == "epsilon").f = 1.0
    onnx_lib.save(graph, str(planted / "vision_par.onnx"))  # the weights stay in the copied .onnx.data
    shutil.rmtree(tmp_path / "art16")
    assert main(["build", str(planted), "--fp16", "--backend", "onnxruntime", "--out", str(tmp_path / "bad")]) == 1
    assert "verify (fp16): FAILED" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "bad"), "--image", str(image), "--prompt", prompt]) == 2
    assert "--allow-unverified" in capsys.readouterr().err


def test_llava_next_7b_geometry_layout_and_reduction():
    """Anyres at LLaVA-NeXT-7B's geometry (336 px tiles, 2x2 grid): N up to 2880 content rows;
    budget = N gives the stock packed features, budget 64 keeps 64 plus the newlines of their rows."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor

    from par_export.models.geometries import llava_config
    from par_export.models.llava_next import NEWLINE, ReducedLlavaNext
    from par_export.reduce import PARConfig

    base = llava_config("llava-1.5-7b")
    base.text_config.num_hidden_layers = 1
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    config = LlavaNextConfig(vision_config=base.vision_config, text_config=base.text_config,
                             image_grid_pinpoints=pinpoints, image_token_index=32000, vision_feature_layer=-2,
                             vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config).eval()
    processor = LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                        image_grid_pinpoints=pinpoints)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 640, 3), dtype=np.uint8))
    enc = processor(images=[image], return_tensors="pt")
    reduced = ReducedLlavaNext(model, "par", PARConfig(k_max=4096, space="llm"))
    features = reduced.vision_features(enc["pixel_values"], enc["image_sizes"])
    tokens, _, layout = features[0]
    n = tokens.shape[0]
    assert 2000 < n <= 2880 and int((layout.order == NEWLINE).sum()) > 0
    with torch.no_grad():
        stock = model.model.get_image_features(enc["pixel_values"], enc["image_sizes"]).pooler_output[0]
    _, rows = reduced.reduce_images(enc["pixel_values"], None, n, features, enc["image_sizes"])
    torch.testing.assert_close(rows[0], stock, atol=1e-4, rtol=1e-4)
    outputs, rows = reduced.reduce_images(enc["pixel_values"], None, 64, features, enc["image_sizes"])
    assert int(outputs[0].num_kept[0]) == 64 and 64 <= rows[0].shape[0] <= 64 + int((layout.order == NEWLINE).sum())


def test_llava_next_7b_geometry_exports_builds_and_verifies(tmp_path, capsys):
    from par_export.models.geometries import NEXT_PINPOINTS, save_llava_geometry

    llava, clip = save_llava_geometry(tmp_path / "model", next_pinpoints=NEXT_PINPOINTS)
    onnx, art = tmp_path / "onnx", tmp_path / "art"
    assert main(["export", "--model", str(llava), "--clip", str(clip), "--out", str(onnx), "--budget", "64"]) == 0
    out = capsys.readouterr().out
    assert "vision_par.onnx: 4 cases" in out and "ok" in out
    assert main(["build", str(onnx), "--precision", "fp32", "--backend", "onnxruntime", "--out", str(art)]) == 0
    assert "N=2880" in capsys.readouterr().out  # verified on a full 2x2 grid too


def test_qwen2_5_vl_3b_geometry_exports_and_runs_like_the_adapter(tmp_path, capsys):
    """448x448 and 1280x720 images through the exported tower + PAR equal ReducedQwen2_5_VL."""
    from par_export.engine.run import run_image
    from par_export.models.families import family_for
    from par_export.models.geometries import save_qwen2_5_vl_geometry
    from par_export.models.qwen2_5_vl import ReducedQwen2_5_VL
    from par_export.reduce import PARConfig

    folder = save_qwen2_5_vl_geometry(tmp_path / "model")
    onnx, art = tmp_path / "onnx", tmp_path / "art"
    # each step in its own process: export peaks at 18 GB here, and a process returns it when it ends
    for argv in (["export", "--model", str(folder), "--out", str(onnx), "--budget", "64"],
                 ["build", str(onnx), "--precision", "fp32", "--backend", "onnxruntime", "--out", str(art)]):
        done = subprocess.run([sys.executable, "-m", "par_export.cli", *argv], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "verify (fp32): PASSED" in done.stdout
    reference = ReducedQwen2_5_VL.from_pretrained(folder, "par", PARConfig())
    inputs = family_for(folder).inputs(folder)
    prompt = "what color is the circle ?"
    for w, h, n in [(448, 448, 256), (1280, 720, 1196)]:
        path = tmp_path / f"{w}x{h}.png"
        Image.fromarray(np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        enc = inputs.encode([prompt], [Image.open(path).convert("RGB")])
        assert reference.tokens_per_image(enc["image_grid_thw"]) == [n]
        expected = reference.prepare_inputs(enc["input_ids"], enc["attention_mask"], enc["pixel_values"],
                                            enc["image_grid_thw"], prompts=[prompt], budget=64)
        result = run_image(art, path, prompt, budget=64)
        assert result["keep_index"] == expected.reduction[0].keep_index[0, :64].tolist()
        np.testing.assert_allclose(result["image_embeds"], expected.image_features[0].numpy(), atol=1e-3)


def export_and_build(folder, tmp_path, *flags) -> tuple:
    """``export`` then ``build`` (fp32, ONNX Runtime, verified), each in its own process (a process
    returns its peak memory when it ends); returns the artifact folder and build's output."""
    onnx, art = tmp_path / "onnx", tmp_path / "art"
    for argv in (["export", "--model", str(folder), "--out", str(onnx), *flags],
                 ["build", str(onnx), "--precision", "fp32", "--backend", "onnxruntime", "--out", str(art)]):
        done = subprocess.run([sys.executable, "-m", "par_export.cli", *argv], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    return art, done.stdout


def random_image(tmp_path, w: int, h: int):
    path = tmp_path / f"{w}x{h}.png"
    Image.fromarray(np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("name", ["qwen3-vl-2b", "qwen3-vl-4b"])
def test_qwen3_vl_geometry_exports_builds_verifies_and_runs_like_the_adapter(name, tmp_path):
    """448x448 and 1280x720 images through the exported tower + PAR: the adapter's kept tokens, main
    rows and the rows of its three DeepStack levels."""
    from par_export.engine.run import run_image
    from par_export.models.families import family_for
    from par_export.models.geometries import save_qwen3_vl_geometry
    from par_export.models.qwen3_vl import ReducedQwen3VL
    from par_export.reduce import PARConfig

    folder = save_qwen3_vl_geometry(tmp_path / "model", name)
    art, built = export_and_build(folder, tmp_path, "--budget", "64")
    assert "verify (fp32): PASSED" in built
    reference = ReducedQwen3VL.from_pretrained(folder, "par", PARConfig())
    inputs = family_for(folder).inputs(folder)
    prompt = "what color is the circle ?"
    for w, h, n in [(448, 448, 196), (1280, 720, 880)]:
        path = random_image(tmp_path, w, h)
        enc = inputs.encode([prompt], [Image.open(path).convert("RGB")])
        assert reference.tokens_per_image(enc["image_grid_thw"]) == [n]
        outputs, rows = reference.reduce_images(enc["pixel_values"], [prompt], 64, image_grid_thw=enc["image_grid_thw"])
        result = run_image(art, path, prompt, budget=64)
        assert result["keep_index"] == outputs[0].keep_index[0, :64].tolist()
        assert result["image_embeds"].shape == (4, 64, reference.model.config.text_config.hidden_size)
        np.testing.assert_allclose(result["image_embeds"], rows[0].numpy(), atol=1e-3)


@pytest.mark.parametrize("name", ["internvl3-1b", "internvl3-2b"])
def test_internvl3_geometry_exports_builds_verifies_and_runs_like_the_adapter(name, tmp_path):
    """A 448x448 image (one tile, 256 tokens) and a 1280x720 one (its tiles plus the thumbnail)
    through the exported tower + PAR: the adapter's kept tokens and rows over all tiles."""
    from par_export.engine.run import run_image
    from par_export.models.families import family_for
    from par_export.models.geometries import save_internvl_geometry
    from par_export.models.internvl import ReducedInternVL
    from par_export.reduce import PARConfig

    folder = save_internvl_geometry(tmp_path / "model", name)
    art, built = export_and_build(folder, tmp_path, "--budget", "64")
    assert "verify (fp32): PASSED" in built
    reference = ReducedInternVL.from_pretrained(folder, "par", PARConfig())
    inputs = family_for(folder).inputs(folder)
    prompt = "what color is the circle ?"
    for w, h, tiles in [(448, 448, 1), (1280, 720, 9)]:
        path = random_image(tmp_path, w, h)
        enc = inputs.encode([prompt], [Image.open(path).convert("RGB")])
        assert reference.tiles_per_image(enc["input_ids"], enc["attention_mask"]) == [tiles]
        expected = reference.prepare_inputs(enc["input_ids"], enc["attention_mask"], enc["pixel_values"],
                                            prompts=[prompt], budget=64)
        result = run_image(art, path, prompt, budget=64)
        assert result["tokens_per_image"] == 256 * tiles
        assert result["keep_index"] == expected.reduction[0].keep_index[0, :64].tolist()
        np.testing.assert_allclose(result["image_embeds"], expected.image_features[0].numpy(), atol=1e-3)
