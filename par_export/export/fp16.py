"""``--fp16``: convert an exported fp32 graph, keeping numerically sensitive parts in fp32.

The conversion is ONNX Runtime's mixed-precision converter (``onnxruntime.transformers``:
``float16.convert_float_to_float16`` with op and node block lists, then ``OnnxModel``'s
``prune_graph`` and ``topological_sort``) plus one pass of ours, :func:`remove_fp16_round_trips`.

Why not onnxconverter-common (1.16.0, the newest release), and why our pass: tried on the
tiny vision+PAR graph (466 nodes, 258 of them the reducer's),
- it retypes the output of a ``Cast(to=float)`` to fp16 without changing ``to``, so ONNX
  Runtime refuses the model (microsoft/onnxconverter-common#320; fixes #326/#328 unmerged);
  putting ``Cast`` in its op block list makes it loop forever, because the ``Cast`` nodes it
  inserts are blocked in turn;
- an initializer shared by a blocked and a converted node stays fp32 for both, so the
  converted ``MatMul`` gets mixed types;
- its ``remove_unnecessary_cast_node`` compares the ``to`` of casts with several consumers
  against 16/32 (bit widths) instead of FLOAT16/FLOAT, so 88 ``fp32 -> fp16 -> fp32`` round
  trips stay inside the reducer and its float32-min sentinels become -inf: the converted
  graph returns NaN embeddings.
ONNX Runtime's ``OnnxModel.convert_float_to_float16`` follows its conversion with
``remove_cascaded_cast_nodes``, which leaves 6 such round trips in the reducer and, as its
docstring warns, would also collapse a ``float -> int -> float`` chain (a floor). Our pass
removes only a ``Cast(fp16) -> Cast(fp32)`` pair whose source is already fp32, which is exact.
``tests/test_export.py::test_fp16_graph_keeps_reducer_fp32`` checks the result.
"""

from __future__ import annotations

import onnx

# Normalization and softmax (fp16 towers lose accuracy there: docs/export.md, "--fp16") and
# index-producing ops whose ranks must not move stay fp32.
FP32_OPS = ["LayerNormalization", "Softmax", "TopK", "ArgMax", "CumSum", "Range", "ReduceMean"]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and activations, except :data:`FP32_OPS` and the reducer subgraph
    (its scores and merge stay fp32, as in the PyTorch reducer)."""
    # optional: onnxruntime's fp16 converter (par-export[cpu] or [gpu])
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415
    from onnxruntime.transformers.onnx_model import OnnxModel  # noqa: PLC0415

    reducer_nodes = [n.name for n in model.graph.node if n.name.startswith("/reducer/")]
    converted = OnnxModel(convert_float_to_float16(model, keep_io_types=False, op_block_list=FP32_OPS,
                                                   node_block_list=reducer_nodes))
    remove_fp16_round_trips(converted.model)
    converted.prune_graph(allow_remove_graph_inputs=False)
    converted.topological_sort()  # the converter appends its Cast nodes at the end
    return converted.model


def remove_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Bypass ``fp32 -> Cast(fp16) -> Cast(fp32)`` pairs (the bypassed casts are left
    without consumers, for ``prune_graph``).

    The converter casts every blocked node's output to fp16 and back before the next
    blocked node, which would round the reducer's fp32 scores (and turn its
    float32-min sentinels into -inf) between every two of its ops.
    """
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(graph.input) + list(graph.value_info) + list(graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    producer = {out: node for node in graph.node for out in node.output}

    def cast_to(node) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    replace: dict[str, str] = {}
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        first = producer.get(node.input[0])
        if first is None or cast_to(first) != onnx.TensorProto.FLOAT16:
            continue
        source = first.input[0]
        source_node = producer.get(source)
        source_is_fp32 = (types.get(source) == onnx.TensorProto.FLOAT
                          or (source_node is not None and cast_to(source_node) == onnx.TensorProto.FLOAT))
        if source_is_fp32:
            replace[node.output[0]] = source
    for node in graph.node:  # graph outputs keep their producing Cast and their names
        for i, name in enumerate(node.input):
            if name in replace:
                node.input[i] = replace[name]

