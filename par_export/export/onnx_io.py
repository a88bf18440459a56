"""Saving ONNX models of any size: weights move to ``<name>.onnx.data`` past protobuf's limit."""

from __future__ import annotations

from pathlib import Path

import onnx

EXTERNAL_DATA_BYTES = 1 << 30  # protobuf caps a file at 2 GiB; move weights out well before


def data_file(path: Path) -> Path:
    """The external-data file that belongs to ``path`` (``<name>.onnx.data``)."""
    return path.with_name(f"{path.name}.data")


def save_onnx(model: onnx.ModelProto, path: str | Path) -> list[Path]:
    """Write ``model`` to ``path`` (external data beside it when large); returns the files written."""
    path = Path(path)
    large = model.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True,
                    location=data_file(path).name)
    return [path, data_file(path)] if large else [path]


def onnx_files(path: str | Path) -> list[Path]:
    """``path`` and, if it has one, its external-data file: what must travel together."""
    path = Path(path)
    return [p for p in (path, data_file(path)) if p.is_file()]
