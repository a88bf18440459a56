"""ONNX export of a vision-language model's vision tower + projector + reducer.

``export_model`` writes ``vision_par.onnx`` and ``query_encoder.onnx``, validates
both against PyTorch, lints them for TensorRT and records how they were made in
their metadata. Names resolve lazily, so a family module can import
:mod:`par_export.export.config` without importing the exporter (which imports the families).
"""

from __future__ import annotations

import importlib

_NAMES = {"GraphSpec": "par_export.export.config", "ExportError": "par_export.export.exporter",
          "export_model": "par_export.export.exporter", "LlavaOnnxConfig": "par_export.models.llava"}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)
