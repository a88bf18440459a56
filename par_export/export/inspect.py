"""Human-readable summary of an exported graph: ``par-export inspect FILE``."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from par_export.export.metadata import load_graph_only, metadata_from_model


def _shape(value: onnx.ValueInfoProto) -> str:
    dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
            for d in value.type.tensor_type.shape.dim]
    return "[" + ", ".join(dims) + "]"


def describe(path: str | Path) -> str:
    model = load_graph_only(path)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    lines = [f"{path}: {Path(path).stat().st_size / 1e6:.2f} MB, opsets {opsets}, {len(model.graph.node)} nodes"]
    for title, values in (("inputs", model.graph.input), ("outputs", model.graph.output)):
        lines.append(f"{title}:")
        for v in values:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
            lines.append(f"  {v.name:<16} {str(dtype):<8} {_shape(v)}")
    metadata = metadata_from_model(model)
    lines.append("metadata (par.*):" if metadata else "metadata: none (not written by par-export)")
    for key, value in sorted(metadata.items()):
        lines.append(f"  {key}: {value if isinstance(value, str) else json.dumps(value, sort_keys=True)}")
    return "\n".join(lines)
