"""The C++ sample compiles against TensorRT's public headers (linking and running need libnvinfer)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from par_export.plugins import find_tensorrt_include

ROOT = Path(__file__).resolve().parents[1]
CUDA_INCLUDE = Path("/usr/local/cuda/include")


@pytest.mark.skipif(shutil.which("g++") is None or not (CUDA_INCLUDE / "cuda_runtime_api.h").is_file(),
                    reason="needs g++ and the CUDA toolkit headers")
def test_cpp_sample_compiles(tmp_path):
    done = subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Werror", "-Wno-deprecated-declarations", "-c",
         str(ROOT / "examples" / "cpp" / "run_vision_par.cpp"), f"-I{find_tensorrt_include()}", f"-I{CUDA_INCLUDE}",
         "-o", str(tmp_path / "run_vision_par.o")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
