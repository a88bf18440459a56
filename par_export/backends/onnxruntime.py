"""ONNX Runtime runner: CPU, CUDA or TensorRT execution providers, whichever are asked and present."""

from __future__ import annotations

from pathlib import Path

import onnx

from par_export.backends.base import BackendUnavailable, PolygraphyRunner
from par_export.backends.ort_custom_op import custom_op_session, uses_custom_op
from par_export.errors import ParExportError

# Execution providers per ``--device``, most preferred first (ONNX Runtime falls back along the list).
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_device = "cpu"


def set_device(device: str) -> None:
    """The device of sessions made without explicit providers (the CLI's ``--device``)."""
    global _device
    if device not in PROVIDERS:
        raise ParExportError(f"--device must be one of {', '.join(PROVIDERS)}, got {device!r}")
    _device = device


def ort_session(path: str | Path, providers: list[str] | None = None):
    """An InferenceSession for ``path`` on ``providers`` (default: those of :func:`set_device`'s
    device); graphs with ``par::TopKCluster`` get its Python CPU op."""
    # optional: onnxruntime comes with par-export[cpu] or [gpu]
    import onnxruntime as ort  # noqa: PLC0415

    model = onnx.load(str(path))
    if uses_custom_op(model):
        return custom_op_session(path, model)
    available = ort.get_available_providers()
    wanted = providers or PROVIDERS[_device]
    if wanted[0] not in available:
        raise BackendUnavailable(f"ONNX Runtime provider {wanted[0]} is not available here (have {available}); "
                                 "install par-export[gpu] (onnxruntime-gpu) for --device cuda/tensorrt")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=wanted)


class OnnxRuntimeRunner(PolygraphyRunner):
    """Polygraphy's ``OnnxrtRunner`` on :func:`ort_session` (the ``--device`` execution providers, and
    the Python CPU op for ``par::TopKCluster`` graphs)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, name: str | None = None):
        super().__init__(name)
        self.path = Path(path)
        self.providers = providers

    def make_runner(self):
        # optional: Polygraphy's ONNX Runtime runner imports onnxruntime
        from polygraphy.backend.onnxrt import OnnxrtRunner  # noqa: PLC0415

        return OnnxrtRunner(ort_session(self.path, self.providers), name=f"onnxruntime:{self.path.name}")
