"""Build, manifest, presets, verify and run: ONNX Runtime end to end; TensorRT where installed."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from par_export.artifact.manifest import ArtifactError, check_manifest, read_manifest
from par_export.cli import main
from par_export.engine.build import BuildError, BuildOptions, build, trtexec_command
from par_export.engine.presets import available_presets, load_preset, parse_preset
from par_export.engine.run import run_image
from par_export.engine.verify import verify
from par_export.export import export_model
from par_export.export.metadata import read_metadata

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "onnx"
    export_model("tiny", out, budget=16, progress=False)
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    rgb = np.zeros((80, 80, 3), np.uint8)
    rgb[10:40, 40:70] = (220, 30, 30)
    Image.fromarray(rgb).save(path)
    return path


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnxruntime_build_verify_run(exported, image, tmp_path, precision):
    manifest = build(exported, tmp_path / "art", BuildOptions(precision=precision, backend="onnxruntime"),
                     progress=False)
    assert manifest.backend == "onnxruntime" and manifest.precision == precision
    assert {i["name"] for i in manifest.graphs["vision_par"].inputs} == {"pixel_values", "query_embeds", "budget"}
    rows, passed, _ = verify(tmp_path / "art", count=3)
    assert passed, rows
    assert {r["reference"] for r in rows} == {"torch", "onnx-fp32"}
    result = run_image(tmp_path / "art", image, "USER: <image> what color is the square?", budget=12,
                       heatmap=tmp_path / "heat.png")
    assert result["num_kept"] == 12 and len(result["keep_index"]) == 12
    assert result["image_embeds"].shape == (12, 32)
    assert (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"


def test_build_from_model_and_cli(image, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["build", "--model", "tiny", "--precision", "fp16", "--backend", "onnxruntime",
                 "--out", str(tmp_path / "art")]) == 0
    assert "verify (fp16): PASSED" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "art"), "-n", "2"]) == 0
    assert main(["run", str(tmp_path / "art"), "--image", str(image), "--prompt", "red square"]) == 0
    out = capsys.readouterr().out
    # the heatmap lands in the current folder: the sealed artifact is never written to
    assert "kept 16/64 tokens" in out and (tmp_path / "kept_tokens.png").is_file()
    assert not (tmp_path / "art" / "kept_tokens.png").exists()


def test_manifest_round_trip_and_refusals(exported, tmp_path):
    art = tmp_path / "art"
    build(exported, art, BuildOptions(precision="fp32", backend="onnxruntime"), progress=False)
    manifest = read_manifest(art)
    assert manifest.metadata.to_json() == read_metadata(exported / "vision_par.onnx")
    assert manifest.graphs["vision_par"].source_sha256
    assert manifest.graphs["vision_par"].profiles["pixel_values"] == [[1, 3, 32, 32], [1, 3, 32, 32],
                                                                      [8, 3, 32, 32]]
    check_manifest(art, manifest, None, None, None)  # as built: accepted

    engine = replace(manifest, backend="tensorrt", backend_version="10.3.0", build={"version_compatible": False},
                     gpu={"name": "Orin", "compute_capability": "8.7"})
    with pytest.raises(ArtifactError, match="TensorRT 10.3.0, this machine has 11.1"):
        check_manifest(art, engine, "11.1.0", "8.7", None)
    with pytest.raises(ArtifactError, match="compute capability 8.7 .*this GPU is 9.0"):
        check_manifest(art, engine, "10.3.1", "9.0", None)
    with pytest.raises(ArtifactError, match="needs the plugin library"):
        check_manifest(art, replace(manifest, plugin={"file": "libpar_plugins.so", "sha256": "0"}), None, None,
                       tmp_path / "missing.so")

    data = (art / "vision_par.ort.onnx").read_bytes()
    (art / "vision_par.ort.onnx").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ArtifactError, match="corrupt, truncated or edited"):
        verify(art)
    (art / "manifest.json").write_text("{broken")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        verify(art)


def test_precisions_the_gpu_lacks_are_refused():
    from par_export.engine.build import check_precision_supported

    with pytest.raises(BuildError, match="fp8 needs compute capability 8.9 or newer; this GPU is 8.7"):
        check_precision_supported("fp8", "8.7")  # Jetson Orin
    with pytest.raises(BuildError, match="bf16 needs compute capability 8.0"):
        check_precision_supported("bf16", "7.5")
    check_precision_supported("fp8", "9.0")
    check_precision_supported("fp16", "7.5")


def test_presets_are_valid_and_bad_ones_are_refused():
    names = available_presets()
    assert {"jetson-orin-nano", "jetson-orin-agx", "jetson-thor", "a100", "h100", "l4"} <= set(names)
    for name in names:
        preset = load_preset(name)
        assert preset.precision in preset.precisions and preset.batch[0] <= preset.batch[2]
    good = json.loads((load_preset.__globals__["PRESET_DIR"] / "h100.json").read_text())
    with pytest.raises(ValueError, match="batch must be"):
        parse_preset({**good, "batch": [4, 2, 1]})
    with pytest.raises(ValueError, match="precisions must be among"):
        parse_preset({**good, "precisions": ["fp4"]})
    with pytest.raises(ValueError, match="unknown target preset 'tpu'"):
        load_preset("tpu")


def test_trtexec_command_follows_the_preset(exported):
    preset = load_preset("jetson-orin-agx")
    options = BuildOptions(precision="fp16", batch=preset.batch, workspace_mib=preset.workspace_mib,
                           dla_core=preset.dla_core, timing_cache="cache.bin")
    command = trtexec_command(exported, read_metadata(exported / "vision_par.onnx"), options)
    assert "--minShapes=pixel_values:1x3x32x32,query_embeds:1x16" in command
    assert "--maxShapes=pixel_values:4x3x32x32,query_embeds:4x16" in command
    assert "--fp16" in command and "--useDLACore=0" in command and "--allowGPUFallback" in command
    assert "--memPoolSize=workspace:4096M" in command and "--timingCacheFile=cache.bin" in command


def test_bad_build_input_leaves_nothing(exported, tmp_path):
    with pytest.raises(BuildError, match="needs TensorRT"):
        build(exported, tmp_path / "a", BuildOptions(precision="bf16", backend="onnxruntime"), progress=False)
    with pytest.raises(BuildError, match="target jetson-orin-nano supports"):
        build(exported, tmp_path / "a", BuildOptions(precision="fp8", target="jetson-orin-nano"), progress=False)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "vision_par.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        build(corrupt / "vision_par.onnx", tmp_path / "a", BuildOptions(backend="onnxruntime"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt"]  # no artifact, no temp folder


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_is_a_clear_error(exported, tmp_path):
    with pytest.raises(BuildError, match="TensorRT's Python package is not installed"):
        build(exported, tmp_path / "a", BuildOptions(backend="tensorrt"), progress=False)


@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT (libnvinfer) is not installed")
def test_tensorrt_engine_builds_and_verifies(exported, tmp_path):
    manifest = build(exported, tmp_path / "engine", BuildOptions(precision="fp16", backend="tensorrt"), progress=False)
    assert manifest.backend == "tensorrt" and manifest.gpu
    rows, passed, _ = verify(tmp_path / "engine")
    assert passed, rows




def test_calibration_data_from_images(exported, image, tmp_path):
    from par_export.engine.build import calibration_data

    metadata = read_metadata(exported / "vision_par.onnx")
    processor = exported / "processor"
    feeds = calibration_data(metadata, str(image.parent), processor)
    assert feeds["pixel_values"].shape == (1, 3, 32, 32) and feeds["query_embeds"].shape == (1, 16)
    from par_export.data.calibration import demo_scenes

    demo = calibration_data(metadata, demo_scenes(4), processor)
    assert demo["pixel_values"].shape == (4, 3, 32, 32) and np.isfinite(demo["pixel_values"]).all()
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(BuildError, match="no .png/.jpg/.bmp images"):
        calibration_data(metadata, str(tmp_path), processor)
    with pytest.raises(BuildError, match="not a folder"):
        calibration_data(metadata, str(tmp_path / "missing"), processor)


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is not None, reason="ModelOpt is installed here")
def test_int8_for_tensorrt_without_modelopt_is_a_clear_error(exported, tmp_path):
    from par_export.engine.build import _quantize_for_tensorrt

    with pytest.raises(BuildError, match="need NVIDIA ModelOpt"):
        _quantize_for_tensorrt(exported / "vision_par.onnx", tmp_path / "q.onnx", "int8", {}, None, exported / "processor")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_of_an_external_data_export_keeps_its_weights(tmp_path, image, monkeypatch, capsys, precision):
    """A real-size export (weights in vision_par.onnx.data) builds, verifies and runs: the ONNX
    Runtime build used to copy the .onnx without its data file ("External data path does not exist")."""
    import par_export.export.onnx_io as onnx_io

    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_BYTES", 10_000)  # the tiny graphs count as large
    export_model("tiny", tmp_path / "onnx", budget=16, progress=False)
    assert (tmp_path / "onnx" / "vision_par.onnx.data").is_file()
    art = tmp_path / "art"
    manifest = build(tmp_path / "onnx", art, BuildOptions(precision=precision, backend="onnxruntime"), progress=False)
    vision = manifest.graphs["vision_par"]
    assert list(vision.data_files) == [f"{vision.file}.data"] and (art / f"{vision.file}.data").is_file()
    assert (art / "onnx" / "vision_par.onnx.data").is_file()  # verify's fp32 reference keeps its weights too
    assert main(["verify", str(art)]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert run_image(art, image, "what color is the square ?", budget=8)["num_kept"] == 8
