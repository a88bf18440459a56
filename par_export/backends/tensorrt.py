"""TensorRT: engine building and a runner. ``tensorrt`` is imported only when used.

TensorRT is not installable on the machines this project is built on; these paths
are exercised where it is (tests skip with the reason otherwise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from par_export.backends.base import BackendUnavailable, Runner

_TRT_HINT = ("TensorRT's Python package is not installed: on x86 `pip install tensorrt` (served from NVIDIA's "
             "index), on Jetson it comes with JetPack (python3-libnvinfer)")


def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError:
        raise BackendUnavailable(_TRT_HINT) from None
    return trt


def tensorrt_version() -> str | None:
    try:
        return import_tensorrt().__version__
    except BackendUnavailable:
        return None


def load_plugin_library(trt, path: Path) -> None:
    """Register libpar_plugins.so's creators (getCreators) with TensorRT's plugin registry."""
    if not Path(path).is_file():
        raise BackendUnavailable(f"plugin library {path} not found: run `par-export plugin build`")
    handle = trt.get_plugin_registry().load_library(str(path))
    if handle is None:
        raise BackendUnavailable(f"TensorRT could not load plugin library {path} (see the TensorRT log above)")


def build_engine(onnx_path: Path, engine_path: Path, precision: str, profiles: dict[str, tuple[tuple, tuple, tuple]],
                 workspace_mib: int, timing_cache: Path | None = None, version_compatible: bool = False,
                 dla_core: int | None = None, plugin: Path | None = None) -> None:
    """Parse ``onnx_path`` and write a serialized engine; ``profiles`` = ``{input: (min, opt, max) shapes}``.

    int8/fp8 need an explicitly quantized (Q/DQ) ONNX graph; the caller produces it with ModelOpt.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    if plugin is not None:
        load_plugin_library(trt, plugin)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailable(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    flags = {"fp16": ["FP16"], "bf16": ["BF16"], "int8": ["INT8", "FP16"], "fp8": ["FP8", "FP16"]}.get(precision, [])
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profiles.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailable(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))


class TensorRTRunner(Runner):
    """Runs a serialized engine with torch CUDA tensors as device buffers."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, plugin: Path | None = None):
        super().__init__()
        self.engine_path = Path(engine_path)
        self.plugin = plugin
        self.engine = self.context = None

    def activate_impl(self) -> None:
        trt = import_tensorrt()
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():
            raise BackendUnavailable("TensorRT engines need a CUDA device")
        if self.plugin is not None:
            load_plugin_library(trt, self.plugin)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{self.engine_path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        self._trt = trt

    def _names(self, mode) -> list[str]:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        return [n for n in names if self.engine.get_tensor_mode(n) == mode]

    def input_names(self) -> list[str]:
        return self._names(self._trt.TensorIOMode.INPUT)

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch  # noqa: PLC0415

        keep = []
        for name, value in feed.items():
            tensor = torch.from_numpy(np.ascontiguousarray(value)).cuda()
            keep.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self._names(self._trt.TensorIOMode.OUTPUT):
            dtype = torch.from_numpy(np.empty(0, dtype=self._trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            outputs[name] = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.engine_path}: TensorRT execution failed")
        stream.synchronize()
        return {name: t.cpu().numpy() for name, t in outputs.items()}

    def deactivate_impl(self) -> None:
        self.context = self.engine = None


__all__ = ["TensorRTRunner", "build_engine", "import_tensorrt", "load_plugin_library", "tensorrt_version"]
