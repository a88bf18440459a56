"""TensorRT: engine building and a runner. ``tensorrt`` is imported only when used.

TensorRT is not installable on the machines this project is built on; these paths
are exercised where it is (tests skip with the reason otherwise).
"""

from __future__ import annotations

from pathlib import Path

import torch

from par_export.backends.base import BackendUnavailable, PolygraphyRunner

_TRT_HINT = ("TensorRT's Python package is not installed: on x86 `pip install tensorrt` (served from NVIDIA's "
             "index), on Jetson it comes with JetPack (python3-libnvinfer)")


def import_tensorrt():
    try:  # optional: TensorRT (pip install par-export[tensorrt], or JetPack on Jetson)
        import tensorrt as trt  # noqa: PLC0415
    except ImportError:
        raise BackendUnavailable(_TRT_HINT) from None
    return trt


def gpu_info() -> dict | None:
    """``{name, compute_capability}`` of CUDA device 0 as torch sees it, or ``None`` without one."""
    try:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
    except Exception:  # no usable CUDA: not an error for a CPU build
        pass
    return None


def tensorrt_version() -> str | None:
    try:
        return import_tensorrt().__version__
    except BackendUnavailable:
        return None


def build_config(precision: str, profiles: dict[str, tuple[tuple, tuple, tuple]], workspace_mib: int,
                 timing_cache: Path | None = None, version_compatible: bool = False, dla_core: int | None = None):
    """Polygraphy's ``CreateConfig`` loader for ``par-export build``'s options. int8/fp8 enable fp16
    too, for the layers left unquantized; ``dla_core``: DLA with GPU fallback on that core."""
    trt = import_tensorrt()
    # optional: TensorRT (Polygraphy's trt loaders)
    from polygraphy.backend.trt import CreateConfig, PostprocessConfig, Profile  # noqa: PLC0415

    profile = Profile()
    for name, (low, opt, high) in profiles.items():
        profile.add(name, low, opt, high)
    config = CreateConfig(fp16=precision in ("fp16", "int8", "fp8"), bf16=precision == "bf16",
                          int8=precision == "int8", fp8=precision == "fp8", profiles=[profile],
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: workspace_mib << 20},
                          load_timing_cache=str(timing_cache) if timing_cache else None,
                          version_compatible=version_compatible, use_dla=dla_core is not None,
                          allow_gpu_fallback=dla_core is not None)
    if dla_core:  # Polygraphy's use_dla takes core 0
        def pick_core(builder, network, trt_config):
            trt_config.DLA_core = dla_core
        config = PostprocessConfig(config, pick_core)
    return config


def build_engine(onnx_path: Path, engine_path: Path, precision: str, profiles: dict[str, tuple[tuple, tuple, tuple]],
                 workspace_mib: int, timing_cache: Path | None = None, version_compatible: bool = False,
                 dla_core: int | None = None, plugin: Path | None = None) -> None:
    """Parse ``onnx_path`` and write a serialized engine; ``profiles`` = ``{input: (min, opt, max) shapes}``.

    Polygraphy's loader chain, as ``polygraphy convert`` runs it: ``LoadPlugins`` ->
    ``NetworkFromOnnxPath`` -> ``CreateConfig`` (:func:`build_config`) -> ``EngineBytesFromNetwork``
    (reads and updates ``timing_cache``) -> ``SaveEngine``. int8/fp8 need an explicitly quantized
    (Q/DQ) ONNX graph; the caller produces it with ModelOpt.
    """
    import_tensorrt()  # one clear message where TensorRT is missing (Polygraphy would import it lazily)
    # optional: TensorRT (Polygraphy's trt loaders)
    from polygraphy.backend.trt import EngineBytesFromNetwork, LoadPlugins, NetworkFromOnnxPath, SaveEngine  # noqa: PLC0415

    network = NetworkFromOnnxPath(str(onnx_path))
    if plugin is not None:
        if not Path(plugin).is_file():
            raise BackendUnavailable(f"plugin library {plugin} not found: run `par-export plugin build`")
        network = LoadPlugins(plugins=[str(plugin)], obj=network)
    config = build_config(precision, profiles, workspace_mib, timing_cache, version_compatible, dla_core)
    cache = str(timing_cache) if timing_cache is not None else None
    try:
        SaveEngine(EngineBytesFromNetwork(network, config, save_timing_cache=cache), str(engine_path))()
    except Exception as err:  # Polygraphy reports a parser or builder failure as PolygraphyException
        raise BackendUnavailable(f"TensorRT could not build {onnx_path}: {err}") from None


class TensorRTRunner(PolygraphyRunner):
    """Runs a serialized engine with Polygraphy's ``TrtRunner`` (device buffers, data-dependent
    output shapes such as the Edge-LLM graph's ``[sum K, hidden]``), plugins loaded first."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, plugin: Path | None = None, name: str | None = None):
        super().__init__(name)
        self.engine_path = Path(engine_path)
        self.plugin = plugin

    def make_runner(self):
        import_tensorrt()
        # optional: TensorRT (Polygraphy's trt loaders)
        from polygraphy.backend.common import BytesFromPath  # noqa: PLC0415
        from polygraphy.backend.trt import EngineFromBytes, LoadPlugins, TrtRunner  # noqa: PLC0415

        if self.plugin is not None and not Path(self.plugin).is_file():
            raise BackendUnavailable(f"plugin library {self.plugin} not found: run `par-export plugin build`")
        engine = EngineFromBytes(BytesFromPath(str(self.engine_path)))
        if self.plugin is not None:
            engine = LoadPlugins(plugins=[str(self.plugin)], obj=engine)
        return TrtRunner(engine, name=f"tensorrt:{self.engine_path.name}")


__all__ = ["TensorRTRunner", "build_config", "build_engine", "import_tensorrt", "tensorrt_version"]
