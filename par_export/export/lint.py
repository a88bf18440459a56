"""Warnings for what TensorRT 10.x's ONNX parser will reject or needs told.

Where TensorRT imports, its own ONNX parser answers (``supports_model_v2``: the subgraphs it
cannot take, :func:`tensorrt_parser_warnings`). Elsewhere this module is the fallback: the op
list is the parser's support matrix (onnx-tensorrt ``docs/operators.md``), ops it marks
unsupported; a custom-domain op needs a TensorRT plugin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

from par_export.export.metadata import load_graph_only, metadata_from_model

TOPK_LIMIT = 3840  # ITopKLayer's largest K

UNSUPPORTED_OPS = frozenset(
    "Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear "
    "HammingWindow HannWindow Hardmax MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial "
    "NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul STFT "
    "SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap "
    "SoftmaxCrossEntropyLoss SplitToSequence StringNormalizer TfIdfVectorizer Unique".split()
)

UNSUPPORTED_DTYPES = {
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.UINT32: "uint32",
    onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.COMPLEX64: "complex64",
    onnx.TensorProto.COMPLEX128: "complex128",
    onnx.TensorProto.STRING: "string",
}


@dataclass(frozen=True)
class LintWarning:
    code: str  # unsupported-op | custom-op | topk-k | dtype | unbounded-dim
    where: str  # node or tensor name
    message: str

    def __str__(self) -> str:
        return f"[{self.code}] {self.where}: {self.message}"


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    values = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = attr.t
    return values


def lint_model(model: onnx.ModelProto, shape_bounds: dict | None = None) -> list[LintWarning]:
    """All warnings for ``model``; ``shape_bounds`` = ``{input: {axis: [min, max]}}``."""
    warnings: list[LintWarning] = []
    graph = model.graph
    constants = _constants(graph)
    for node in graph.node:
        name = node.name or f"<{node.op_type} -> {node.output[0]}>"
        if node.domain not in ("", "ai.onnx"):
            hint = " (libpar_plugins.so: `par-export plugin path`)" if node.domain == "par" else ""
            warnings.append(LintWarning("custom-op", name, f"{node.domain}::{node.op_type} needs a TensorRT plugin{hint}"))
        elif node.op_type in UNSUPPORTED_OPS:
            warnings.append(LintWarning("unsupported-op", name, f"{node.op_type} is not supported by TensorRT's ONNX parser"))
        elif node.op_type == "TopK" and len(node.input) > 1:
            k = constants.get(node.input[1])
            if k is None:
                warnings.append(LintWarning(
                    "topk-k", name, "K is a graph value, not an initializer: parsers before TensorRT 10 reject it, "
                    f"and K must stay <= {TOPK_LIMIT} at run time"))
            elif int(numpy_helper.to_array(k).reshape(-1)[0]) > TOPK_LIMIT:
                value = int(numpy_helper.to_array(k).reshape(-1)[0])
                warnings.append(LintWarning("topk-k", name, f"K = {value} exceeds TensorRT's TopK limit {TOPK_LIMIT}"))

    typed = [(v.name, v.type.tensor_type.elem_type) for v in list(graph.input) + list(graph.output) + list(graph.value_info)]
    typed += [(t.name, t.data_type) for t in graph.initializer]
    for tensor, elem_type in typed:
        if elem_type in UNSUPPORTED_DTYPES:
            warnings.append(LintWarning("dtype", tensor, f"{UNSUPPORTED_DTYPES[elem_type]} is not a TensorRT type"))

    bounds = shape_bounds or {}
    initializers = {init.name for init in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            if str(axis) not in bounds.get(value.name, {}):
                label = dim.dim_param or "?"
                warnings.append(LintWarning(
                    "unbounded-dim", value.name,
                    f"axis {axis} ({label}) is dynamic with no recorded bounds: a TensorRT optimization profile "
                    "needs min/opt/max for it"))
    return warnings


def tensorrt_parser_warnings(path: str | Path) -> list[LintWarning] | None:
    """What TensorRT's own ONNX parser cannot take (``OnnxParser.supports_model_v2``), or ``None``
    where TensorRT does not import (the rule-based lint then stands alone)."""
    try:
        # optional: TensorRT
        import tensorrt as trt  # noqa: PLC0415
    except ImportError:
        return None
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    parser = trt.OnnxParser(builder.create_network(0), logger)
    if parser.supports_model_v2(Path(path).read_bytes(), str(Path(path).parent)):
        return []
    found = []
    for index in range(parser.num_subgraphs):
        if not parser.is_subgraph_supported(index):
            nodes = parser.get_subgraph_nodes(index)
            found.append(LintWarning("tensorrt-parser", f"subgraph {index} ({len(nodes)} nodes)",
                                     "TensorRT's ONNX parser cannot take it"))
    for index in range(parser.num_errors):
        found.append(LintWarning("tensorrt-parser", str(parser.get_error(index).node_name()),
                                 parser.get_error(index).desc()))
    return found


def lint_file(path: str | Path) -> list[LintWarning]:
    """Lint an ONNX file, taking shape bounds from its ``par.shape_bounds`` metadata; plus TensorRT's
    own parser verdict where TensorRT is installed."""
    parser_warnings = tensorrt_parser_warnings(path) or []
    model = load_graph_only(path)
    bounds = metadata_from_model(model).get("shape_bounds")
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # lint what we have; shape inference failures are reported by validation
        pass
    return parser_warnings + lint_model(model, bounds)
