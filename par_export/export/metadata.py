"""How a graph was made, stored in its ONNX ``metadata_props`` (``par.*`` keys)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from par_export.errors import ParExportError

PREFIX = "par."


def set_metadata(model: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Store ``values`` as ``par.<key>`` props; non-strings are JSON-encoded."""
    keep = [p for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key = PREFIX + key
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``par.*`` props of an ONNX file (without loading external weights), JSON-decoded."""
    return metadata_from_model(load_graph_only(path))


def metadata_from_model(model: onnx.ModelProto) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for prop in model.metadata_props:
        if not prop.key.startswith(PREFIX):
            continue
        try:
            values[prop.key[len(PREFIX) :]] = json.loads(prop.value)
        except json.JSONDecodeError:
            values[prop.key[len(PREFIX) :]] = prop.value
    return values


def load_graph_only(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file's graph without external weights, with a clear error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for a corrupt file
        raise ParExportError(f"{path}: not a readable ONNX model ({type(err).__name__}: {err})") from None
    if not model.ir_version or not model.graph.node:  # an empty file parses as an empty ModelProto
        raise ParExportError(f"{path}: not an ONNX model (empty, or no graph)")
    return model
