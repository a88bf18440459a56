"""ONNX Runtime runner: CPU, CUDA or TensorRT execution providers, whichever are asked and present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from par_export.backends.base import BackendUnavailable, Runner


def ort_session(path: str | Path, providers: list[str] | None = None):
    """An InferenceSession for ``path``; graphs with ``par::TopKCluster`` get its Python CPU op."""
    import onnxruntime as ort

    from par_export.export.ort_custom_op import custom_op_session, uses_custom_op

    model = onnx.load(str(path))
    if uses_custom_op(model):
        return custom_op_session(path, model)
    available = ort.get_available_providers()
    wanted = providers or ["CPUExecutionProvider"]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise BackendUnavailable(f"ONNX Runtime providers {missing} are not available here (have {available}); "
                                 "install onnxruntime-gpu (extra 'gpu') for CUDA/TensorRT providers")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=wanted)


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        super().__init__()
        self.path = Path(path)
        self.providers = providers
        self.session = None

    def activate_impl(self) -> None:
        self.session = ort_session(self.path, self.providers)

    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))

    def deactivate_impl(self) -> None:
        self.session = None
