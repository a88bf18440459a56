"""The manifest written beside every built artifact, and the checks made before loading one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1


class ArtifactError(ValueError):
    """An artifact that cannot be loaded here: corrupt, or built for another GPU/runtime/plugin."""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST}; build the artifact with `par-export build`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: manifest format {manifest.get('format')!r}, this par-export reads {FORMAT}")
    return manifest


def check_manifest(folder: str | Path, manifest: dict, runtime_version: str | None,
                   compute_capability: str | None, plugin_file: Path | None) -> None:
    """Refuse, with the reason, an artifact this machine cannot run as built.

    Checks each graph file against its recorded sha256 (truncated/corrupt files), the
    runtime version and GPU compute capability for TensorRT engines, and the plugin
    library's presence and sha256.
    """
    folder = Path(folder)
    for graph in manifest["graphs"].values():
        path = folder / graph["file"]
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (listed in {MANIFEST})")
        if sha256(path) != graph["sha256"]:
            raise ArtifactError(f"{path}: sha256 differs from {MANIFEST}: the file is corrupt, truncated or replaced")
    if manifest["backend"] == "tensorrt":
        built = manifest["backend_version"]
        same_minor = runtime_version is None or built.split(".")[:2] == runtime_version.split(".")[:2]
        if not same_minor and not manifest["build"].get("version_compatible"):
            raise ArtifactError(f"engine built with TensorRT {built}, this machine has {runtime_version}: "
                                "rebuild it here, or build with --version-compatible")
        gpu = manifest.get("gpu") or {}
        if compute_capability is not None and gpu.get("compute_capability") not in (None, compute_capability):
            raise ArtifactError(f"engine built for compute capability {gpu.get('compute_capability')} "
                                f"({gpu.get('name')}), this GPU is {compute_capability}: rebuild it on this GPU")
    plugin = manifest.get("plugin")
    if plugin:
        if plugin_file is None or not Path(plugin_file).is_file():
            raise ArtifactError(f"artifact needs the plugin library {plugin['file']} (par::TopKCluster): build it "
                                "with `par-export plugin build` or pass its path")
        if manifest["backend"] == "tensorrt" and sha256(plugin_file) != plugin["sha256"]:
            raise ArtifactError(f"plugin library {plugin_file} differs from the one the engine was built with "
                                f"(sha256 {plugin['sha256'][:12]}...): rebuild the engine or use that library")
