"""Tracing a module to ONNX and finishing the file: what every export layout shares."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from par_export.export.fp16 import to_fp16
from par_export.export.metadata import set_metadata
from par_export.export.onnx_io import save_onnx
from par_export.models.onnx_config import GraphSpec


def trace_onnx(module: torch.nn.Module, args: tuple, spec: GraphSpec, opset: int, path: Path) -> None:
    """``torch.onnx.export`` (TorchScript) of ``module`` on ``args`` with ``spec``'s names and dynamic axes."""
    with warnings.catch_warnings():
        # Only the tracer's chatter about python scalars of static shapes (they are static here by
        # design) and the notice that this is the TorchScript exporter (chosen, docs/export.md);
        # every other warning is shown.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset, input_names=list(spec.inputs),
            output_names=list(spec.outputs), dynamic_axes=spec.dynamic_axes, do_constant_folding=True,
        )


def finalize_graph(raw: Path, final: Path, metadata: dict, fp16: bool, static_dims: dict | None = None,
              output_names: tuple[str, ...] = ()) -> None:
    """Add metadata (and convert to fp16), re-save; weights go to ``<name>.onnx.data`` when large.

    ``static_dims`` = ``{output: {axis: size}}`` pins output axes the tracer left symbolic.
    ``output_names``: the declared names; an output the exporter folded into a constant (and
    renamed) gets its name back through an Identity node.
    """
    model = onnx.load(str(raw))
    for value, name in zip(model.graph.output, output_names):
        if value.name != name:
            model.graph.node.append(onnx.helper.make_node("Identity", [value.name], [name], name=f"/{name}/Identity"))
            value.name = name
    if fp16:
        model = to_fp16(model)
    for value in model.graph.output:
        for axis, size in (static_dims or {}).get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_value = size
    set_metadata(model, metadata)
    save_onnx(model, final)
