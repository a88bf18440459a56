"""ONNX export of a vision-language model's vision tower + projector + reducer.

``export_llava`` writes ``vision_par.onnx`` and ``query_encoder.onnx``, validates
both against PyTorch, lints them for TensorRT and records how they were made in
their metadata.
"""

from par_export.export.config import GraphSpec, LlavaOnnxConfig
from par_export.export.exporter import ExportError, export_llava

__all__ = ["ExportError", "GraphSpec", "LlavaOnnxConfig", "export_llava"]
