"""libpar_plugins.so compiles against the TensorRT headers and exports the plugin entry points."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from par_export.plugins import LIBRARY, PluginBuildError, build_plugin, find_tensorrt_include

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not installed")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_plugin(archs=("90",), out_dir=tmp_path_factory.mktemp("plugin"))


def symbols(path, *flags):
    out = subprocess.run(["nm", "-D", *flags, str(path)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_exports_tensorrt_entry_points_and_launch_function(library):
    assert library.name == LIBRARY
    defined = symbols(library, "--defined-only")
    assert {"getCreators", "setLoggerFinder", "parTopKClusterLaunch", "parTopKClusterLaunchClustered",
            "parTopKClusterWorkspaceSize"} <= defined


def test_leaves_no_tensorrt_symbol_undefined(library):
    # Loadable by IPluginRegistry::loadLibrary / trtexec --dynamicPlugins without libnvinfer link-time deps.
    undefined = symbols(library, "--undefined-only")
    assert not {s for s in undefined if "nvinfer" in s.lower() or s in ("getPluginRegistry", "getLogger")}


def test_missing_tools_are_clear_errors(tmp_path, monkeypatch):
    import par_export.plugins as plugins

    monkeypatch.setattr(plugins, "REPO", tmp_path / "checkout")  # no vendored headers there
    monkeypatch.delenv("TENSORRT_INCLUDE", raising=False)
    monkeypatch.delenv("TENSORRT_ROOT", raising=False)
    if not any((p / "NvInfer.h").is_file() for p in map(Path, ["/usr/include/x86_64-linux-gnu",
                                                                "/usr/include/aarch64-linux-gnu", "/usr/include"])):
        with pytest.raises(PluginBuildError, match="NvInfer.h not found"):
            find_tensorrt_include()
    monkeypatch.undo()
    with pytest.raises(PluginBuildError, match="nvcc not found"):
        build_plugin(out_dir=tmp_path, nvcc=str(tmp_path / "no-nvcc"))
    assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob(".*tmp"))
