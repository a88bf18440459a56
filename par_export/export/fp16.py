"""``--fp16``: convert an exported fp32 graph, keeping numerically sensitive parts in fp32.

The conversion is ONNX Runtime's float16 converter plus two passes of ours (topological
sort, fp16 round-trip removal). onnxconverter-common (1.16.0), which has both passes built
in, was tried on these graphs and fails them: it converts a weight the exporter shares
between the projector and the reducer (through an ``Identity``) to fp16 while the blocked
reducer side stays typed fp32, and it retypes a ``Cast``'s output without changing its
``to`` attribute, so ONNX Runtime refuses both models; with ``Cast`` in the block list its
conversion of the tiny 475-node graph did not finish in 60 s.
"""

from __future__ import annotations

import onnx

# Normalization and softmax (fp16 towers lose accuracy there: docs/export.md, "--fp16") and
# index-producing ops whose ranks must not move stay fp32.
FP32_OPS = ["LayerNormalization", "Softmax", "TopK", "ArgMax", "CumSum", "Range", "ReduceMean"]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and activations, except :data:`FP32_OPS` and the reducer subgraph
    (its scores and merge stay fp32, as in the PyTorch reducer)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    reducer_nodes = [n.name for n in model.graph.node if n.name.startswith("/reducer/")]
    converted = convert_float_to_float16(model, keep_io_types=False, op_block_list=FP32_OPS,
                                         node_block_list=reducer_nodes)
    topological_sort(converted.graph)  # the converter appends its Cast nodes at the end
    remove_fp16_round_trips(converted)
    return converted


def remove_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Bypass ``fp32 -> Cast(fp16) -> Cast(fp32)`` pairs.

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
    _drop_dead_nodes(graph)


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    used = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(out in used for out in node.output):
            keep.append(node)
            used.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` in place so every node follows the producers of its inputs."""
    produced_by = {out: i for i, node in enumerate(graph.node) for out in node.output}
    order: list[int] = []
    state: dict[int, int] = {}  # 1 = visiting, 2 = done

    def visit(index: int) -> None:
        stack = [(index, False)]
        while stack:
            i, expanded = stack.pop()
            if expanded:
                state[i] = 2
                order.append(i)
                continue
            if state.get(i):
                continue
            state[i] = 1
            stack.append((i, True))
            for name in graph.node[i].input:
                producer = produced_by.get(name)
                if producer is not None and not state.get(producer):
                    stack.append((producer, False))

    for i in range(len(graph.node)):
        visit(i)
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)
