"""ONNX export of a vision-language model's vision tower + projector + reducer.

``export_model`` writes ``vision_par.onnx`` and ``query_encoder.onnx``, validates both against
PyTorch, lints them for TensorRT and records how they were made in their metadata. What a family
exports (graph specs, export configs, traced modules) is declared in :mod:`par_export.models`.
"""

from par_export.export.exporter import ExportError, export_model

__all__ = ["ExportError", "export_model"]
