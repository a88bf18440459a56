"""ONNX export: parity with PyTorch, dynamic batch and budget, metadata, lint, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import METHODS

from par_export.export import ExportError, export_model
from par_export.export.lint import lint_model
from par_export.export.metadata import read_metadata
from par_export.models.llava import ReducedLlava
from par_export.models.loading import ModelFolderError
from par_export.models.tiny import save_tiny_clip, save_tiny_llava
from par_export.reduce import PARConfig, reducer_class

ROOT = Path(__file__).resolve().parents[1]
GEOMETRIES = {
    "8x8-patch4-d32": dict(image_size=32, patch_size=4, vision_hidden=32, text_hidden=32),
    "12x12-patch6-d48": dict(image_size=72, patch_size=6, vision_hidden=48, text_hidden=64),
}


@pytest.fixture(scope="module", params=list(GEOMETRIES))
def model_dirs(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    llava = save_tiny_llava(root / "llava", **GEOMETRIES[request.param])
    return llava, save_tiny_clip(root / "clip", llava)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def export(model_dirs, out, method="par", budget="auto", **kwargs):
    llava, clip = model_dirs
    return export_model(llava, out, method=method, budget=budget, clip_path=clip, progress=False, **kwargs)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_exports_and_validates(model_dirs, tmp_path, method):
    budget = "auto" if reducer_class(method).supports_auto else 24
    report = export(model_dirs, tmp_path / "out", method=method, budget=budget)
    vision = report["graphs"]["vision_par"]
    assert report["passed"] and vision["checker"] == "ok" and vision["shape_inference"] == "ok"
    assert vision["max_abs_error"] <= 1e-4 and vision["min_index_agreement"] >= 0.99
    assert {c["case"].split()[0] for c in vision["cases"]} == {"batch=1", "batch=2", "batch=4"}
    assert (tmp_path / "out" / "report.json").is_file()


def test_onnx_pipeline_matches_eager_llava(model_dirs, tmp_path):
    """query_encoder.onnx -> vision_par.onnx reproduce ReducedLlava's eager reduction."""
    llava_dir, clip_dir = model_dirs
    export(model_dirs, tmp_path / "out", budget=20)
    eager = ReducedLlava.from_pretrained(llava_dir, "par", PARConfig(budget=20), clip_path=clip_dir)
    prompts = ["USER: <image>\nwhat color is the circle ?", "is there a red square on the left ?", ""]
    size = eager.model.config.vision_config.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    reduction, features = eager.reduce_images(pixels, prompts, budget=20)

    encoder = eager.query_encoder
    ids, mask = encoder.tokenize([q or "." for q in encoder.queries(prompts)], encoder.add_special_tokens)
    (query,) = session(tmp_path / "out" / "query_encoder.onnx").run(None, {"input_ids": ids.numpy(),
                                                                          "attention_mask": mask.numpy()})
    query[2] = 0  # an empty prompt is an all-zero query
    embeds, kept, index = session(tmp_path / "out" / "vision_par.onnx").run(
        None, {"pixel_values": pixels.numpy(), "query_embeds": query, "budget": np.array(20)})
    assert kept.tolist() == reduction.num_kept.tolist() == [20, 20, 20]
    assert (index[:, :20] == reduction.keep_index.numpy()).mean() >= 0.99
    assert (index[:, 20:] == -1).all()
    for b, feature in enumerate(features):
        np.testing.assert_allclose(embeds[b, : len(feature)], feature.numpy(), atol=1e-4)
        assert not embeds[b, len(feature) :].any()


def test_one_file_serves_any_batch_and_budget(model_dirs, tmp_path):
    llava_dir, clip_dir = model_dirs
    export(model_dirs, tmp_path / "out", budget=16, config=PARConfig(k_max=48))
    eager = ReducedLlava.from_pretrained(llava_dir, "par", PARConfig(k_max=48), clip_path=clip_dir)
    graph = session(tmp_path / "out" / "vision_par.onnx")
    size = eager.model.config.vision_config.image_size
    gen = torch.Generator().manual_seed(0)
    for batch, budget in [(1, 5), (3, 17), (5, 48)]:
        pixels = torch.randn(batch, 3, size, size, generator=gen)
        query = torch.randn(batch, eager.model.config.vision_config.projection_dim, generator=gen)
        tokens, attn = eager.vision_features(pixels)
        expected = eager.reducer(tokens, query.unsqueeze(1), attn, budget=torch.tensor(budget))
        embeds, kept, index = graph.run(None, {"pixel_values": pixels.numpy(), "query_embeds": query.numpy(),
                                               "budget": np.array(budget, dtype=np.int64)})
        assert embeds.shape == (batch, 48, eager.model.config.text_config.hidden_size)
        assert kept.tolist() == [budget] * batch
        assert (index == expected.keep_index.numpy()).mean() >= 0.99
        with torch.no_grad():
            projected = eager.projector(expected.tokens).numpy()
        np.testing.assert_allclose(embeds[:, :budget], projected[:, :budget], atol=1e-4)


def test_fp16_export_validates_within_documented_bounds(model_dirs, tmp_path):
    report = export(model_dirs, tmp_path / "out", budget=16, fp16=True)
    assert report["precision"] == "fp16" and report["passed"]
    vision = onnx.load(str(tmp_path / "out" / "vision_par.onnx"))
    assert vision.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    graph = report["graphs"]["vision_par"]
    assert graph["max_abs_error"] <= 0.05 * graph["reference_max_abs"]
    assert_reducer_stays_fp32(vision)


def assert_reducer_stays_fp32(model: onnx.ModelProto) -> None:
    """No reducer value goes through fp16: no ``Cast(fp16)`` between two reducer nodes and no
    ``Cast(fp16) -> Cast(fp32)`` round trip; nodes in topological order (the checker's rule)."""
    onnx.checker.check_model(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    to = {n.name: next(a.i for a in n.attribute if a.name == "to") for n in model.graph.node if n.op_type == "Cast"}
    for node in model.graph.node:
        if to.get(node.name) != onnx.TensorProto.FLOAT16:
            continue
        source = producer.get(node.input[0])
        users = consumers.get(node.output[0], [])
        assert not any(to.get(u.name) == onnx.TensorProto.FLOAT for u in users), f"round trip at {node.name}"
        assert not (source is not None and source.name.startswith("/reducer/")
                    and any(u.name.startswith("/reducer/") for u in users)), f"reducer value rounded at {node.name}"


def test_metadata_round_trip(model_dirs, tmp_path):
    config = PARConfig(beta=0.6, k_max=40)
    export(model_dirs, tmp_path / "out", budget=16, config=config, opset=17, batch_max=4)
    meta = read_metadata(tmp_path / "out" / "vision_par.onnx")
    assert PARConfig.from_dict(meta["config"]) == config.replace(budget=16)
    assert meta["method"] == "par" and meta["budget"] == 16 and meta["budget_input"] is True
    assert meta["export"]["opset"] == 17 and meta["export"]["batch_max"] == 4
    assert meta["width"] == 40 and meta["graph"] == "vision_par"
    assert meta["versions"]["torch"] == torch.__version__
    assert read_metadata(tmp_path / "out" / "query_encoder.onnx")["graph"] == "query_encoder"


def test_lint_finds_planted_problems():
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Unique", ["x"], ["u"], name="planted_unique"),
        helper.make_node("TopK", ["x", "k"], ["v", "i"], name="planted_topk", axis=0),
        helper.make_node("Cast", ["x"], ["d"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Foo", ["x"], ["f"], name="planted_custom", domain="acme"),
    ]
    graph = helper.make_graph(
        nodes, "planted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("u", "v", "f")]
        + [helper.make_tensor_value_info("d", TensorProto.DOUBLE, None)],
        initializer=[helper.make_tensor("k", TensorProto.INT64, [1], [5000])],
    )
    warnings = {(w.code, w.where) for w in lint_model(helper.make_model(graph))}
    assert ("unsupported-op", "planted_unique") in warnings
    assert ("topk-k", "planted_topk") in warnings
    assert ("dtype", "d") in warnings
    assert ("custom-op", "planted_custom") in warnings
    assert ("unbounded-dim", "x") in warnings
    assert not {w for w in lint_model(helper.make_model(graph), {"x": {"0": [1, 8]}}) if w.code == "unbounded-dim"}


def test_exported_graphs_lint_clean(model_dirs, tmp_path):
    report = export(model_dirs, tmp_path / "out", budget=16)
    assert report["lint"] == {"vision_par": [], "query_encoder": []}


def test_bad_input_leaves_nothing_behind(model_dirs, tmp_path):
    llava_dir, clip_dir = model_dirs
    out = tmp_path / "out"
    with pytest.raises(ModelFolderError, match="model_type is 'clip'"):
        export_model(clip_dir, out, progress=False)
    with pytest.raises(ModelFolderError, match="not a folder"):
        export_model(tmp_path / "missing", out, progress=False)
    with pytest.raises(ExportError, match="exceeds the"):
        export_model(llava_dir, out, budget=100000, progress=False)
    with pytest.raises(ExportError, match="no adaptive budget"):
        export_model(llava_dir, out, method="random", budget="auto", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temp folder
    out.mkdir()
    with pytest.raises(ExportError, match="exists; pass --overwrite"):
        export_model(llava_dir, out, progress=False)


def test_cli_export_inspect_and_polygraphy(tmp_path):
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "par_export.cli"]
    done = subprocess.run(cli + ["export", "--model", "tiny", "--out", str(out), "--budget", "16"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "vision_par.onnx: 6 cases" in done.stdout and ": ok" in done.stdout
    shown = subprocess.run(cli + ["inspect", str(out / "vision_par.onnx")], capture_output=True, text=True)
    assert "budget           int64    []" in shown.stdout and "method: par" in shown.stdout
    polygraphy = Path(sys.executable).with_name("polygraphy")
    run = subprocess.run([str(polygraphy), "run", str(out / "vision_par.onnx"), "--onnxrt", "--data-loader-script",
                          str(ROOT / "tools" / "polygraphy_data_loader.py")], capture_output=True, text=True)
    assert run.returncode == 0 and "PASSED" in run.stdout + run.stderr, run.stdout + run.stderr
    again = subprocess.run(cli + ["export", "--model", "tiny", "--out", str(out)], capture_output=True, text=True)
    assert again.returncode != 0 and "exists; pass --overwrite" in again.stderr


def test_large_graphs_move_weights_to_external_data(model_dirs, tmp_path, monkeypatch):
    import par_export.export.onnx_io as onnx_io

    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_BYTES", 10_000)  # the tiny graphs count as large
    report = export(model_dirs, tmp_path / "out", budget=16)
    assert report["passed"]  # validation ran on the external-data files
    assert (tmp_path / "out" / "vision_par.onnx.data").stat().st_size > 10_000
    assert (tmp_path / "out" / "vision_par.onnx").stat().st_size < 100_000


def test_cli_export_fp16_reports_its_relative_bound(tmp_path, capsys):
    """`export --fp16` printed tolerance['max_abs_error'], which fp16 bounds do not have (KeyError)."""
    from par_export.cli import main

    assert main(["export", "--model", "tiny", "--out", str(tmp_path / "out"), "--budget", "16", "--fp16"]) == 0
    out = capsys.readouterr().out
    assert "vision_par.onnx: " in out and "ok" in out and "outputs up to" in out


def test_a_failed_validation_writes_its_report_to_a_file_and_prints_a_table(tmp_path, capsys, monkeypatch):
    """A real failure: projector weights scaled by 1e7 overflow fp16 (the fp32 reference does not).
    The error is one line naming the failed cases and the report file; the table goes to stderr;
    the report file holds every case of both graphs; nothing is written at --out."""
    import json
    import tempfile

    from safetensors.torch import load_file, save_file

    from par_export.cli import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the report file goes into the test's folder
    llava = save_tiny_llava(tmp_path / "llava")
    weights = load_file(llava / "model.safetensors")
    for name in [n for n in weights if "multi_modal_projector.linear_2" in n]:
        weights[name] = weights[name] * 1e7
    save_file(weights, llava / "model.safetensors", metadata={"format": "pt"})
    assert main(["export", "--model", str(llava), "--fp16", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "error:" in line)
    assert "validation failed for" in line and "vision_par batch=" in line and "nothing was written" in line
    assert "graph" in err and "FAILED" in err  # the per-case table
    report = json.loads(Path(line.split("the whole report: ")[1].split(";")[0]).read_text())
    assert set(report) == {"vision_par", "query_encoder"} and report["vision_par"]["passed"] is False
    assert any(not case["passed"] for case in report["vision_par"]["cases"])
    assert all(case["passed"] for case in report["query_encoder"]["cases"])
    assert not (tmp_path / "out").exists()
