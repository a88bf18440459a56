"""Open a built artifact folder: manifest checks first, then a runner per graph."""

from __future__ import annotations

from pathlib import Path

from par_export.backends.base import Runner
from par_export.backends.onnxruntime import OnnxRuntimeRunner
from par_export.engine.manifest import check_manifest, check_verified, read_manifest
from par_export.plugins import plugin_path


def artifact_runners(folder: str | Path, allow_unverified: bool = False) -> tuple[dict, dict[str, Runner]]:
    """``(manifest, {graph name: runner})`` after refusing what this machine cannot run, a broken
    seal, and (unless ``allow_unverified``) an artifact whose verification did not pass."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not allow_unverified:
        check_verified(folder, manifest)
    plugin = plugin_path() if manifest.get("plugin") else None
    if manifest["backend"] == "tensorrt":
        from par_export.backends.tensorrt import TensorRTRunner, gpu_info, tensorrt_version

        gpu = gpu_info() or {}
        check_manifest(folder, manifest, tensorrt_version(), gpu.get("compute_capability"), plugin)
        runners = {name: TensorRTRunner(folder / g["file"], plugin) for name, g in manifest["graphs"].items()}
    else:
        # ONNX Runtime serves par::TopKCluster with its Python op: no plugin library needed.
        check_manifest(folder, {**manifest, "plugin": None}, None, None, None)
        runners = {name: OnnxRuntimeRunner(folder / g["file"]) for name, g in manifest["graphs"].items()}
    return manifest, runners


def close_runners(runners: dict[str, Runner]) -> None:
    """Deactivate the runners still active (sessions held for a pipeline's or server's life)."""
    for runner in runners.values():
        if runner.is_active:
            runner.deactivate()
