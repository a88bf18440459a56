"""`export --format edge-llm`: Qwen2.5-VL's visual graph in TensorRT Edge-LLM 0.11's input layout,
PAR inside, run by ONNX Runtime; its inputs compared with Edge-LLM's own exporter's where installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from par_export.cli import main

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "what color is the circle ?"


def edgellm_exporter() -> str | None:
    """``tensorrt-edgellm-export`` from $EDGELLM_EXPORT or the separate venv .ci/run makes (its pins
    clash with ours), if present."""
    candidates = [os.environ.get("EDGELLM_EXPORT"), ROOT / ".venv-edgellm" / "bin" / "tensorrt-edgellm-export"]
    return next((str(c) for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from par_export.models.tiny import save_tiny_qwen2_5_vl

    return save_tiny_qwen2_5_vl(tmp_path_factory.mktemp("edge") / "qwen2.5-vl")


@pytest.fixture(scope="module")
def exported(qwen, tmp_path_factory):
    out = tmp_path_factory.mktemp("edge-out") / "art"
    assert main(["export", "--model", str(qwen), "--out", str(out), "--format", "edge-llm", "--budget", "8",
                 "--k-max", "16"]) == 0
    return out


def signature(path: Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    return {v.name: (str(onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)),
                     len(v.type.tensor_type.shape.dim)) for v in model.graph.input}


def test_inputs_are_edge_llm_layout(exported):
    ours = signature(exported / "visual" / "model.onnx")
    assert list(ours)[:7] == ["input", "rotary_pos_emb", "cu_seqlens", "cu_window_seqlens", "window_index",
                              "reverse_window_index", "max_seqlen_carrier"]
    assert ours["input"] == ("float16", 2) and ours["rotary_pos_emb"] == ("float32", 2)
    assert ours["cu_seqlens"] == ("int32", 1) and ours["window_index"] == ("int64", 1)
    assert {"query_embeds", "budget"} <= set(ours)
    assert (exported / "visual" / "config.json").is_file() and (exported / "processor").is_dir()


def test_rows_equal_the_adapter_fed_by_the_processor(qwen, exported):
    """Edge-LLM's inputs built for processed images -> ORT -> the rows ReducedQwen2_5_VL keeps, for
    each image alone and for both in one call."""
    import onnxruntime as ort

    from par_export.export.edge_llm import edge_geometry, edge_inputs
    from par_export.models.families import family_for
    from par_export.models.qwen2_5_vl import ReducedQwen2_5_VL
    from par_export.reduce import PARConfig

    reference = ReducedQwen2_5_VL.from_pretrained(qwen, "par", PARConfig(k_max=16))
    inputs = family_for(qwen).inputs(qwen)
    session = ort.InferenceSession(str(exported / "visual" / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    singles = []
    for w, h in [(80, 40), (36, 72)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        enc = inputs.encode([PROMPT], [image])
        expected = reference.prepare_inputs(enc["input_ids"], enc["attention_mask"], enc["pixel_values"],
                                            enc["image_grid_thw"], prompts=[PROMPT], budget=8)
        query, _ = reference.query_encoder([PROMPT])
        feed = edge_inputs(edge_geometry(reference), enc["image_grid_thw"], enc["pixel_values"].numpy())
        feed["query_embeds"] = query.mean(dim=1).numpy().astype(np.float16)
        feed["budget"] = np.array(8, np.int64)
        output, num_kept, keep_index = session.run(["output", "num_kept", "keep_index"], feed)
        out = expected.reduction[0]
        assert int(num_kept[0]) == 8 and keep_index.tolist() == out.keep_index[0, :8].tolist()
        np.testing.assert_allclose(output.astype(np.float32), expected.image_features[0].numpy(), atol=2e-2,
                                   rtol=1e-2)
        singles.append((image, out.keep_index[0, :8].tolist(), output))

    # both images in one call: rows image after image, K and grid indices per image
    enc = inputs.encode([PROMPT, PROMPT], [image for image, _, _ in singles])
    feed = edge_inputs(edge_geometry(reference), enc["image_grid_thw"], enc["pixel_values"].numpy())
    feed["query_embeds"] = np.repeat(query.mean(dim=1).numpy().astype(np.float16), 2, axis=0)
    feed["budget"] = np.array(8, np.int64)
    output, num_kept, keep_index = session.run(["output", "num_kept", "keep_index"], feed)
    assert num_kept.tolist() == [8, 8] and output.shape[0] == 16
    assert keep_index.tolist() == singles[0][1] + singles[1][1]
    np.testing.assert_allclose(output.astype(np.float32), np.concatenate([singles[0][2], singles[1][2]]), atol=2e-3)


def test_a_llava_folder_is_refused(tiny_folders, tmp_path, capsys):
    assert main(["export", "--model", str(tiny_folders[0]), "--out", str(tmp_path / "o"), "--format", "edge-llm",
                 "--budget", "8"]) == 2
    assert "Edge-LLM 0.11 runs no LLaVA" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.skipif(edgellm_exporter() is None, reason="tensorrt-edgellm[export] is not installed in a separate venv "
                    "(.ci/run makes .venv-edgellm where its wheel installs; or set EDGELLM_EXPORT)")
def test_same_inputs_as_edge_llms_own_exporter(qwen, exported, tmp_path):
    """Edge-LLM's exporter on the same checkpoint (saved in bf16: it rejects an fp32 checkpoint's
    activations in its fp16 linears) writes the inputs our graph takes, by name, dtype and rank."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    bf16 = tmp_path / "qwen-bf16"
    shutil.copytree(qwen, bf16)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen, local_files_only=True)
    model.to(torch.bfloat16).save_pretrained(bf16, safe_serialization=True)
    result = subprocess.run([edgellm_exporter(), str(bf16), str(tmp_path / "edge"), "--skip-llm"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = signature(tmp_path / "edge" / "visual" / "model.onnx")
    ours = signature(exported / "visual" / "model.onnx")
    assert {name: ours[name] for name in theirs} == theirs


def test_options_the_layout_cannot_take_are_refused_before_loading(tmp_path, capsys):
    """--format edge-llm is a layout of the one exporter: the onnx layout's options and an adaptive
    budget are refused in one line each, nothing written."""
    base = ["export", "--model", "tiny", "--format", "edge-llm", "--out", str(tmp_path / "o")]
    for extra, message in ((["--budget", "auto"], "fixed budget K"), (["--budget", "8", "--fp16"], "--fp16: not taken"),
                           (["--budget", "8", "--plugin"], "--plugin: not taken"),
                           (["--budget", "8", "--method", "pool"], "per-image token count")):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- Qwen3-VL
@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    from par_export.models.tiny import save_tiny_qwen3_vl

    return save_tiny_qwen3_vl(tmp_path_factory.mktemp("edge3") / "qwen3-vl")


@pytest.fixture(scope="module")
def exported3(qwen3, tmp_path_factory):
    out = tmp_path_factory.mktemp("edge3-out") / "art"
    assert main(["export", "--model", str(qwen3), "--out", str(out), "--format", "edge-llm", "--budget", "8",
                 "--k-max", "16"]) == 0
    return out


def outputs_of(path: Path) -> list[str]:
    return [v.name for v in onnx.load(str(path), load_external_data=False).graph.output]


def test_qwen3_rows_and_deepstack_rows_equal_the_adapter(qwen3, exported3):
    """Qwen3-VL: Edge-LLM's inputs for processed images -> ORT -> the main rows and each DeepStack
    level's rows ReducedQwen3VL keeps, for each image alone and for both in one call."""
    import onnxruntime as ort

    from par_export.export.edge_llm import edge_inputs_qwen3
    from par_export.models.families import family_for
    from par_export.models.qwen3_vl import ReducedQwen3VL
    from par_export.reduce import PARConfig

    reference = ReducedQwen3VL.from_pretrained(qwen3, "par", PARConfig(k_max=16))
    inputs = family_for(qwen3).inputs(qwen3)
    path = exported3 / "visual" / "model.onnx"
    assert outputs_of(path) == ["output", "deepstack_features_0", "deepstack_features_1", "num_kept", "keep_index"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    query = reference.query_encoder([PROMPT])[0].mean(dim=1).numpy().astype(np.float16)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(80, 40), (36, 72)]]
    singles = []
    for image in images:
        enc = inputs.encode([PROMPT], [image])
        outputs, rows = reference.reduce_images(enc["pixel_values"], [PROMPT], 8, image_grid_thw=enc["image_grid_thw"])
        feed = edge_inputs_qwen3(reference.visual, enc["image_grid_thw"], enc["pixel_values"].numpy())
        result = session.run(None, {**feed, "query_embeds": query, "budget": np.array(8, np.int64)})
        *levels, num_kept, keep_index = result
        assert int(num_kept[0]) == 8 and keep_index.tolist() == outputs[0].keep_index[0, :8].tolist()
        np.testing.assert_allclose(np.stack(levels).astype(np.float32), rows[0].numpy(), atol=2e-3, rtol=1e-2)
        singles.append((keep_index.tolist(), np.stack(levels)))
    enc = inputs.encode([PROMPT, PROMPT], images)
    feed = edge_inputs_qwen3(reference.visual, enc["image_grid_thw"], enc["pixel_values"].numpy())
    *levels, num_kept, keep_index = session.run(None, {**feed, "query_embeds": np.repeat(query, 2, axis=0),
                                                       "budget": np.array(8, np.int64)})
    assert num_kept.tolist() == [8, 8] and keep_index.tolist() == singles[0][0] + singles[1][0]
    np.testing.assert_allclose(np.stack(levels).astype(np.float32),
                               np.concatenate([singles[0][1], singles[1][1]], axis=1).astype(np.float32), atol=2e-3)


@pytest.mark.skipif(edgellm_exporter() is None, reason="tensorrt-edgellm[export] is not installed in a separate venv "
                    "(.ci/run makes .venv-edgellm where its wheel installs; or set EDGELLM_EXPORT)")
def test_qwen3_same_inputs_and_outputs_as_edge_llms_own_exporter(qwen3, exported3, tmp_path):
    """Edge-LLM's exporter on the same Qwen3-VL checkpoint (bf16) writes the inputs our graph takes
    (name, dtype, rank) and the outputs it returns (``output``, one ``deepstack_features_{i}`` per
    level), which ours returns reduced."""
    from transformers import Qwen3VLForConditionalGeneration

    bf16 = tmp_path / "qwen3-bf16"
    shutil.copytree(qwen3, bf16)
    model = Qwen3VLForConditionalGeneration.from_pretrained(qwen3, local_files_only=True)
    model.to(torch.bfloat16).save_pretrained(bf16, safe_serialization=True)
    result = subprocess.run([edgellm_exporter(), str(bf16), str(tmp_path / "edge"), "--skip-llm"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = signature(tmp_path / "edge" / "visual" / "model.onnx")
    ours = signature(exported3 / "visual" / "model.onnx")
    assert {name: ours[name] for name in theirs} == theirs
    their_outputs = outputs_of(tmp_path / "edge" / "visual" / "model.onnx")
    assert their_outputs == ["output", "deepstack_features_0", "deepstack_features_1"]
    assert outputs_of(exported3 / "visual" / "model.onnx")[:3] == their_outputs


# ---------------------------------------------------------------------------- InternVL
@pytest.fixture(scope="module")
def internvl(tmp_path_factory):
    from par_export.models.tiny import save_tiny_internvl

    return save_tiny_internvl(tmp_path_factory.mktemp("edge-ivl") / "internvl")


@pytest.fixture(scope="module")
def exported_internvl(internvl, tmp_path_factory):
    out = tmp_path_factory.mktemp("edge-ivl-out") / "art"
    assert main(["export", "--model", str(internvl), "--out", str(out), "--format", "edge-llm", "--budget", "8",
                 "--k-max", "16"]) == 0
    return out


def test_internvl_rows_equal_the_adapter(internvl, exported_internvl):
    """InternVL: one image's tiles as Edge-LLM's ``input`` -> ORT -> the rows ReducedInternVL keeps over
    all its tiles, for images of two shapes (4 and 3 tiles)."""
    import onnxruntime as ort

    from par_export.models.families import family_for
    from par_export.models.internvl import ReducedInternVL
    from par_export.reduce import PARConfig

    reference = ReducedInternVL.from_pretrained(internvl, "par", PARConfig(k_max=16))
    inputs = family_for(internvl).inputs(internvl)
    session = ort.InferenceSession(str(exported_internvl / "visual" / "model.onnx"), providers=["CPUExecutionProvider"])
    query = reference.query_encoder([PROMPT])[0].mean(dim=1).numpy().astype(np.float16)
    rng = np.random.default_rng(2)
    for w, h in [(96, 32), (30, 70)]:
        enc = inputs.encode([PROMPT], [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))])
        expected = reference.prepare_inputs(enc["input_ids"], enc["attention_mask"], enc["pixel_values"],
                                            prompts=[PROMPT], budget=8)
        output, num_kept, keep_index = session.run(None, {"input": enc["pixel_values"].numpy().astype(np.float16),
                                                          "query_embeds": query, "budget": np.array(8, np.int64)})
        assert int(num_kept[0]) == 8 and keep_index.tolist() == expected.reduction[0].keep_index[0, :8].tolist()
        np.testing.assert_allclose(output.astype(np.float32), expected.image_features[0].numpy(), atol=2e-3, rtol=1e-2)


@pytest.mark.skipif(edgellm_exporter() is None, reason="tensorrt-edgellm[export] is not installed in a separate venv "
                    "(.ci/run makes .venv-edgellm where its wheel installs; or set EDGELLM_EXPORT)")
def test_internvl_same_input_as_edge_llms_own_exporter(internvl, exported_internvl, tmp_path):
    """Edge-LLM's exporter on the same InternVL checkpoint (bf16) writes the ``input`` our graph takes
    (name, dtype, rank) and an ``output`` our graph returns (its rows reduced)."""
    from transformers import InternVLForConditionalGeneration

    bf16 = tmp_path / "internvl-bf16"
    shutil.copytree(internvl, bf16)
    model = InternVLForConditionalGeneration.from_pretrained(internvl, local_files_only=True)
    model.to(torch.bfloat16).save_pretrained(bf16, safe_serialization=True)
    result = subprocess.run([edgellm_exporter(), str(bf16), str(tmp_path / "edge"), "--skip-llm"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    theirs = signature(tmp_path / "edge" / "visual" / "model.onnx")
    ours = signature(exported_internvl / "visual" / "model.onnx")
    assert theirs == {"input": ("float16", 4)} and {name: ours[name] for name in theirs} == theirs
    assert outputs_of(tmp_path / "edge" / "visual" / "model.onnx") == ["output"]
    assert outputs_of(exported_internvl / "visual" / "model.onnx")[0] == "output"
