"""Runners with one interface (Polygraphy-style): ``activate()``, ``infer(feed) -> outputs``,
``deactivate()``, usable as context managers. TensorRT is imported lazily."""

from par_export.backends.base import BackendUnavailable, Runner
from par_export.backends.onnxruntime import OnnxRuntimeRunner, ort_session
from par_export.backends.torch import TorchRunner

__all__ = ["BackendUnavailable", "OnnxRuntimeRunner", "Runner", "TorchRunner", "ort_session"]
