"""The package as a user installs it: a non-editable wheel in a fresh venv, run from outside the
repository, finds its presets and its demo model (package data) and keeps its plugin out of the
installed tree."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding only the built wheel; the dependencies come from this environment's
    site-packages through a path file (so no download), which adds them without running their
    own path files (the editable install of the source tree stays invisible)."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(root / "dist"), str(ROOT)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((root / "dist").glob("par_export-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = next(venv.glob("lib/python*/site-packages"))
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    return venv, wheel, root


def run(venv: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PAR_PLUGIN_DIR")}
    env["XDG_CACHE_HOME"] = str(cwd / "cache")
    return subprocess.run([str(venv / "bin" / "par-export"), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_wheel_runs_from_outside_the_repository(installed):
    venv, wheel, root = installed
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import par_export; print(par_export.__file__)"],
                           cwd=root, capture_output=True, text=True)
    assert str(venv) in where.stdout, where  # the installed copy, not the source tree

    methods = run(venv, root, "methods")
    assert methods.returncode == 0 and "par " in methods.stdout
    trtexec = run(venv, root, "build", "--model", "tiny", "--target", "jetson-orin-nano", "--print-trtexec")
    assert trtexec.returncode == 0, trtexec.stderr[-2000:]
    assert "trtexec" in trtexec.stdout and "--fp16" in trtexec.stdout  # the preset's precision
    path = run(venv, root, "plugin", "path")
    assert path.stdout.strip() == str(root / "cache" / "par-export" / "plugins" / "libpar_plugins.so")


def test_one_version_source_and_no_shadowing_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    base = " ".join(project["dependencies"])
    assert "onnxruntime>" not in base and "onnxruntime-gpu" not in base  # chosen by extra only
    extras = project["optional-dependencies"]
    assert any(d.startswith("onnxruntime>") for d in extras["cpu"])
    assert not any(d.startswith("onnxruntime>") for d in extras["gpu"])
    assert any(d.startswith("pillow") for d in project["dependencies"])
    assert not any("==" in d for d in project["dependencies"])  # ranges; pins live in constraints.txt
