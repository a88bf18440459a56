"""Build and locate ``libpar_plugins.so`` (the TensorRT plugins in ``plugins/``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from par_export.errors import ParExportError
from par_export.files import check_out

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("par_topk_cluster/topKClusterKernel.cu", "par_topk_cluster/topKClusterPlugin.cpp")
# A100, Jetson Orin, Ada (L4), Hopper (H100), Jetson Thor (sm_110 since CUDA 13).
DEFAULT_ARCHS = ("80", "87", "89", "90", "110")
LIBRARY = "libpar_plugins.so"


class PluginBuildError(ParExportError):
    """The plugin library could not be built; the message says what is missing."""


def plugin_dir() -> Path:
    """Where ``plugin build`` writes and ``plugin path`` looks: ``$PAR_PLUGIN_DIR``, else the user's
    cache folder ``${XDG_CACHE_HOME:-~/.cache}/par-export/plugins`` (never inside the installed package)."""
    if os.environ.get("PAR_PLUGIN_DIR"):
        return Path(os.environ["PAR_PLUGIN_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "par-export" / "plugins"


def plugin_path() -> Path:
    return plugin_dir() / LIBRARY


def find_tensorrt_include(explicit: str | Path | None = None) -> Path:
    """A folder holding ``NvInfer.h``: the argument, ``$TENSORRT_INCLUDE``, ``$TENSORRT_ROOT/include``,
    the system folders of JetPack/Debian packages, or the vendored public headers."""
    if explicit is not None:  # asked for: no silent fallback to another TensorRT's headers
        if not (Path(explicit) / "NvInfer.h").is_file():
            raise PluginBuildError(f"--trt-include {explicit}: no NvInfer.h there; give the folder that holds it")
        return Path(explicit)
    candidates = [os.environ.get("TENSORRT_INCLUDE")]
    if os.environ.get("TENSORRT_ROOT"):
        candidates.append(Path(os.environ["TENSORRT_ROOT"]) / "include")
    candidates += ["/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include",
                   REPO.parent / "shared" / "third_party" / "tensorrt" / "include"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "NvInfer.h").is_file():
            return Path(candidate)
    raise PluginBuildError("NvInfer.h not found: pass --trt-include DIR or set TENSORRT_INCLUDE "
                           "(JetPack: /usr/include/aarch64-linux-gnu; tar package: TensorRT-*/include)")


def nvcc_command(archs: tuple[str, ...], include: Path, output: Path, nvcc: str = "nvcc") -> list[str]:
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    sources = [str(REPO / "plugins" / s) for s in SOURCES]
    return [nvcc, "-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC", "-Xcompiler", "-Wno-deprecated-declarations",
            "--cudart", "shared", *gencode, f"-I{include}", *sources, "-o", str(output)]


def build_plugin(archs: tuple[str, ...] | None = None, out_dir: str | Path | None = None,
                 trt_include: str | Path | None = None, nvcc: str | None = None) -> Path:
    """Compile the plugin library; written to a temp file and renamed, so a failure leaves no library.
    ``out_dir`` follows the output-folder rule of every command (:func:`par_export.files.check_out`)."""
    out = check_out(out_dir) if out_dir is not None else plugin_dir()
    nvcc = nvcc or shutil.which("nvcc") or (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc")
    if not Path(nvcc).exists() and shutil.which(str(nvcc)) is None:
        raise PluginBuildError("nvcc not found: install the CUDA toolkit or set CUDA_HOME")
    missing = [s for s in SOURCES if not (REPO / "plugins" / s).is_file()]
    if missing:
        raise PluginBuildError(f"plugin sources {missing} not found under {REPO / 'plugins'}: build from a source checkout")
    archs = tuple(archs or DEFAULT_ARCHS)
    out.mkdir(parents=True, exist_ok=True)
    include = find_tensorrt_include(trt_include)
    fd, tmp = tempfile.mkstemp(prefix=f".{LIBRARY}.", suffix=".tmp", dir=out)
    os.close(fd)
    try:
        done = subprocess.run(nvcc_command(archs, include, Path(tmp), str(nvcc)), capture_output=True, text=True)
        if done.returncode != 0:
            raise PluginBuildError(f"nvcc failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        os.replace(tmp, out / LIBRARY)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out / LIBRARY
