"""``par-export triton-repo``: the exported graphs as a Triton model repository.

Three models: ``par_query_encoder`` and ``par_vision`` (ONNX Runtime backend) and the
``par_pipeline`` ensemble (token ids + pixels [+ budget] -> reduced embeddings). All use
``max_batch_size: 0`` with an explicit dynamic batch axis, because ``budget`` is a scalar
(declared ``dims: [1]`` reshaped to ``[]``), which Triton's implicit batching cannot carry.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from par_export.errors import ParExportError
from par_export.export.custom_op import DOMAIN
from par_export.export.metadata import load_graph_only, metadata_from_model
from par_export.files import atomic_folder

TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16", onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.BOOL: "TYPE_BOOL",
}
MODELS = {"query_encoder": "par_query_encoder", "vision_par": "par_vision"}
ENSEMBLE = "par_pipeline"


def _tensor_block(kind: str, value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    if tensor.elem_type not in TRITON_TYPES:
        raise ParExportError(f"{value.name}: ONNX type {tensor.elem_type} has no Triton equivalent here")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    reshape = ""
    if not dims:  # a scalar: Triton needs at least one dim
        dims, reshape = [1], " reshape { shape: [ ] }"
    return (f'{kind} {{ name: "{value.name}" data_type: {TRITON_TYPES[tensor.elem_type]} '
            f'dims: [ {", ".join(map(str, dims))} ]{reshape} }}')


def model_config(name: str, graph: onnx.ModelProto) -> str:
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', "max_batch_size: 0"]
    lines += [_tensor_block("input", v) for v in graph.graph.input]
    lines += [_tensor_block("output", v) for v in graph.graph.output]
    lines.append("instance_group [ { kind: KIND_AUTO } ]")
    return "\n".join(lines) + "\n"


def ensemble_config(query: onnx.ModelProto, vision: onnx.ModelProto) -> str:
    vision_inputs = {v.name for v in vision.graph.input}
    inputs = [v for v in query.graph.input] + [v for v in vision.graph.input if v.name != "query_embeds"]
    lines = [f'name: "{ENSEMBLE}"', 'platform: "ensemble"', "max_batch_size: 0"]
    lines += [_tensor_block("input", v) for v in inputs]
    lines += [_tensor_block("output", v) for v in vision.graph.output]
    query_step = ('  { model_name: "par_query_encoder" model_version: -1 '
                  'input_map { key: "input_ids" value: "input_ids" } '
                  'input_map { key: "attention_mask" value: "attention_mask" } '
                  'output_map { key: "query_embeds" value: "query_embeds_internal" } }')
    vision_maps = " ".join(f'input_map {{ key: "{n}" value: "{"query_embeds_internal" if n == "query_embeds" else n}" }}'
                           for n in (v.name for v in vision.graph.input))
    vision_outputs = " ".join(f'output_map {{ key: "{v.name}" value: "{v.name}" }}' for v in vision.graph.output)
    vision_step = f'  {{ model_name: "par_vision" model_version: -1 {vision_maps} {vision_outputs} }}'
    steps = [query_step, vision_step] if "query_embeds" in vision_inputs else [vision_step]
    lines.append("ensemble_scheduling { step [\n" + ",\n".join(steps) + "\n] }")
    return "\n".join(lines) + "\n"


def write_triton_repo(source: str | Path, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Write the repository for an export folder (``vision_par.onnx`` + ``query_encoder.onnx``)."""
    source = Path(source)
    vision_path, query_path = source / "vision_par.onnx", source / "query_encoder.onnx"
    for path in (vision_path, query_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; give a `par-export export` folder")
    vision, query = load_graph_only(vision_path), load_graph_only(query_path)
    if not metadata_from_model(vision):
        raise ParExportError(f"{vision_path}: no par.* metadata; give a folder `par-export export` wrote")
    if any(node.domain == DOMAIN for node in vision.graph.node):
        raise ParExportError("this export holds par::TopKCluster (--plugin); Triton's ONNX Runtime backend cannot run "
                         "it: export without --plugin, or serve a TensorRT engine with libpar_plugins.so preloaded")
    written = []
    with atomic_folder(out, overwrite, ParExportError, inputs=[source]) as (final, _):
        for graph_name, model_name in MODELS.items():
            folder = final / model_name
            (folder / "1").mkdir(parents=True)
            graph = vision if graph_name == "vision_par" else query
            (folder / "config.pbtxt").write_text(model_config(model_name, graph))
            shutil.copy(source / f"{graph_name}.onnx", folder / "1" / "model.onnx")
            data = source / f"{graph_name}.onnx.data"
            if data.is_file():
                shutil.copy(data, folder / "1" / data.name)
            written.append(Path(out) / model_name / "config.pbtxt")
        (final / ENSEMBLE / "1").mkdir(parents=True)
        (final / ENSEMBLE / "config.pbtxt").write_text(ensemble_config(query, vision))
        written.append(Path(out) / ENSEMBLE / "config.pbtxt")
        for item in ("processor", "tokenizer"):  # what a client needs to build the inputs
            if (source / item).is_dir():
                shutil.copytree(source / item, final / "client" / item)
            elif (source / item).is_file():
                (final / "client").mkdir(exist_ok=True)
                shutil.copy(source / item, final / "client" / item)
        meta = metadata_from_model(vision)
        (final / "README.txt").write_text(
            f"PAR ({meta.get('method')}, budget {meta.get('budget')}) for {meta.get('model_name', meta.get('model'))}.\n"
            "Serve: docker run --gpus all -p8000:8000 -p8001:8001 -v $PWD:/models "
            "nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models\n"
            "Client inputs: pixel_values from AutoProcessor.from_pretrained('client/processor') (the checkpoint's "
            "own image processor); query ids from the rewritten prompt with client/tokenizer.\n")
    return written
