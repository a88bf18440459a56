"""The Triton model repository: every config.pbtxt parses with Triton's own proto, and the
ensemble's wiring, run step by step on ONNX Runtime, yields the vision graph's outputs."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from par_export.backends.onnxruntime import ort_session
from par_export.export import export_model
from par_export.serving.triton import write_triton_repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    export_model("tiny", root / "onnx", budget=16, progress=False)
    write_triton_repo(root / "onnx", root / "repo")
    return root / "repo"


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_configs_parse_and_describe_the_graphs(repo):
    vision = parse(repo / "par_vision" / "config.pbtxt")
    assert vision.backend == "onnxruntime" and vision.max_batch_size == 0
    inputs = {i.name: i for i in vision.input}
    assert list(inputs["pixel_values"].dims) == [-1, 3, 32, 32]
    assert list(inputs["budget"].dims) == [1] and inputs["budget"].HasField("reshape")
    assert [o.name for o in vision.output] == ["image_embeds", "num_kept", "keep_index"]
    query = parse(repo / "par_query_encoder" / "config.pbtxt")
    assert [i.name for i in query.input] == ["input_ids", "attention_mask"]
    assert (repo / "par_vision" / "1" / "model.onnx").is_file() and (repo / "client" / "tokenizer").is_dir()


def test_ensemble_wiring_runs(repo):
    ensemble = parse(repo / "par_pipeline" / "config.pbtxt")
    assert ensemble.platform == "ensemble"
    rng = np.random.default_rng(0)
    values = {"input_ids": np.array([[1, 40, 41, 2]], np.int64), "attention_mask": np.ones((1, 4), np.int64),
              "pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32), "budget": np.array(16)}
    assert {i.name for i in ensemble.input} == set(values)
    for step in ensemble.ensemble_scheduling.step:
        session = ort_session(repo / step.model_name / "1" / "model.onnx")
        feed = {key: values[value] for key, value in step.input_map.items()}
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        values.update({value: outputs[key] for key, value in step.output_map.items()})
    assert {o.name for o in ensemble.output} <= set(values)
    assert values["num_kept"].tolist() == [16] and values["image_embeds"].shape == (1, 64, 32)


def test_plugin_exports_are_refused(tmp_path):
    export_model("tiny", tmp_path / "onnx", budget=16, plugin=True, progress=False)
    with pytest.raises(ValueError, match="par::TopKCluster"):
        write_triton_repo(tmp_path / "onnx", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
