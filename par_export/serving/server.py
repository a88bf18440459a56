"""``par-export serve``: a real Triton Inference Server in front of one artifact.

The ``tritonserver`` binary and its Python backend come from the ``nvidia-pytriton`` wheel
(``pip install par-export[serve]``), or from a Triton installation (``--tritonserver PATH``, e.g.
``/opt/tritonserver/bin/tritonserver`` in NVIDIA's container). One model, ``par_reduce``
(:mod:`par_export.serving.triton_model`), runs the artifact's query encoder and vision+PAR graph
with ONNX Runtime inside Triton's Python backend, with Triton's dynamic batcher and
``--instances`` model instances. The repository lives in a temporary folder that is removed at
shutdown; nothing is written into the artifact.

Two environment facts this module handles (checked on CPython 3.11.7, nvidia-pytriton 0.7.0):
the backend stub links the system ``libpython3.11.so``, which is not the interpreter's own under
pyenv and fails to load a model ("'_thread.RLock' object has no attribute '_recursion_count'")
unless ``LD_LIBRARY_PATH`` starts with this interpreter's ``LIBDIR``; and the stub is built
against NumPy 1.x, so under NumPy 2 it reads and writes tensors as garbage (empty outputs, a
crash on string inputs): ``serve`` refuses to start under NumPy 2 and says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from par_export.errors import ParExportError
from par_export.serving.service import ReductionService

MODEL = "par_reduce"
log = logging.getLogger("par_export.serve")


class ServeError(ParExportError):
    """Triton cannot be started or has stopped; the message (one line) says why."""


@dataclass
class ServeOptions:
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8  # Triton's max_batch_size: images the dynamic batcher puts in one execute()
    max_queue_delay_us: int = 2000  # how long the batcher waits to fill a batch
    instances: int = 1  # model instances (each its own stub process and ONNX Runtime sessions)
    allow_unverified: bool = False
    tritonserver: str | None = None  # a tritonserver binary (its backends beside it); default: nvidia-pytriton's
    ready_timeout_s: float = 180.0


@dataclass
class TritonInstall:
    binary: Path
    backends: Path  # holds python/libtriton_python.so
    stub: Path | None  # the Python backend stub for this interpreter (nvidia-pytriton ships one per version)
    libs: Path | None  # shared libraries the binary needs (nvidia-pytriton's)


def find_triton(binary: str | None = None) -> TritonInstall:
    """Where ``tritonserver`` and its Python backend are: ``binary`` (a Triton install), else the
    ``nvidia-pytriton`` wheel's copy."""
    if binary is not None:
        path = Path(binary)
        if not path.is_file():
            raise ServeError(f"--tritonserver {binary}: no such file")
        backends = path.resolve().parent.parent / "backends"
        if not (backends / "python" / "libtriton_python.so").is_file():
            raise ServeError(f"--tritonserver {binary}: no Python backend at {backends / 'python'}")
        return TritonInstall(path, backends, None, None)
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise ServeError("no tritonserver: pip install 'par-export[serve]' (nvidia-pytriton ships one), or pass "
                         "--tritonserver PATH")
    dist = Path(spec.origin).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServeError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    return TritonInstall(dist / "bin" / "tritonserver", dist / "backends", stub,
                         Path(spec.origin).parent.parent / "nvidia_pytriton.libs")


def check_numpy() -> None:
    if int(np.__version__.split(".")[0]) >= 2:
        raise ServeError(f"serve needs numpy<2 (found {np.__version__}): Triton's Python backend stub is built "
                         "against NumPy 1.x and misreads tensors under NumPy 2; install par-export[serve] in its "
                         "own environment (docs/serving.md)")


def check_port(port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as a server binds: connections of an earlier server still in TIME_WAIT do not count, a listener does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            raise ServeError(f"{flag} {port}: the port is already in use; stop what holds it or pick another "
                             "port") from None


def model_config(artifact: Path, embed_dim: int, options: ServeOptions) -> str:
    """``config.pbtxt`` of :data:`MODEL` (inputs/outputs as :mod:`~par_export.serving.triton_model` reads them)."""
    inputs = [("prompt", "TYPE_STRING", "1"), ("input_ids", "TYPE_INT64", "-1"), ("image", "TYPE_STRING", "1"),
              ("pixel_values", "TYPE_FP32", "3, -1, -1"), ("budget", "TYPE_INT64", "1")]
    lines = [f'name: "{MODEL}"', 'backend: "python"', f"max_batch_size: {options.max_batch}"]
    # ragged: requests whose variable dims differ still share a batch (the model takes them one by one)
    lines += [f'input {{ name: "{n}" data_type: {t} dims: [ {d} ] optional: true allow_ragged_batch: true }}'
              for n, t, d in inputs]
    lines += [f'output {{ name: "image_embeds" data_type: TYPE_FP32 dims: [ -1, {embed_dim} ] }}',
              'output { name: "num_kept" data_type: TYPE_INT64 dims: [ 1 ] }',
              'output { name: "keep_index" data_type: TYPE_INT64 dims: [ -1 ] }']
    lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}")
    lines.append(f"instance_group [ {{ count: {options.instances} kind: KIND_CPU }} ]")
    lines.append(f'parameters {{ key: "artifact" value {{ string_value: "{artifact}" }} }}')
    lines.append(f'parameters {{ key: "allow_unverified" value {{ string_value: "{int(options.allow_unverified)}" }} }}')
    return "\n".join(lines) + "\n"


def write_repository(root: Path, artifact: Path, embed_dim: int, options: ServeOptions) -> Path:
    repo = root / "models"
    (repo / MODEL / "1").mkdir(parents=True)
    (repo / MODEL / "config.pbtxt").write_text(model_config(artifact, embed_dim, options))
    (repo / MODEL / "1" / "model.py").write_text(
        "from par_export.serving.triton_model import TritonPythonModel  # noqa: F401\n")
    return repo


def backends_folder(root: Path, install: TritonInstall) -> Path:
    """The backend directory Triton loads from: nvidia-pytriton's, with this interpreter's stub
    beside ``libtriton_python.so`` (where the backend looks for it), as PyTriton itself arranges."""
    if install.stub is None:
        return install.backends
    backends = root / "backends"
    shutil.copytree(install.backends, backends)
    shutil.copy(install.stub, backends / "python" / "triton_python_backend_stub")
    return backends


def server_env(install: TritonInstall) -> dict:
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR")] + ([str(install.libs)] if install.libs else [])
    env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
    # the stub's embedded interpreter takes its prefix (and site-packages) from the python on PATH
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _die_with_parent() -> None:
    """In the child: SIGTERM when the parent dies, even by SIGKILL (no orphan tritonserver)."""

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    wanted = [line for line in text if " E" in line[:6] or "rror" in line] or text
    return "\n".join(wanted[-lines:])


def serve(artifact: str | Path, options: ServeOptions, on_ready=None) -> int:
    """Run Triton until SIGTERM/SIGINT (or until it exits); returns the exit status.
    ``on_ready()`` is called once the model answers ``/v2/models/par_reduce/ready``."""

    ports = {"--http-port": options.http_port, "--grpc-port": options.grpc_port, "--metrics-port": options.metrics_port}
    for flag, port in ports.items():
        others = [other for other, value in ports.items() if value == port and other != flag]
        if others:  # Triton would print a fragment of its usage text
            raise ServeError(f"{flag} {port}: the same port as {others[0]}; give each endpoint its own port")
        check_port(port, flag)
    check_numpy()
    install = find_triton(options.tritonserver)
    artifact = Path(artifact).resolve()
    # refuse a bad artifact before Triton starts; the model instances load the graphs, not this process
    embed_dim = ReductionService(artifact, options.allow_unverified).embed_dim
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    root = Path(tempfile.mkdtemp(prefix="par-serve-"))
    process = None
    try:
        repo = write_repository(root, artifact, embed_dim, options)
        command = [str(install.binary), f"--model-repository={repo}",
                   f"--backend-directory={backends_folder(root, install)}",
                   f"--http-port={options.http_port}", f"--grpc-port={options.grpc_port}",
                   f"--metrics-port={options.metrics_port}", "--exit-timeout-secs=10", "--log-verbose=0"]
        server_log = root / "tritonserver.log"
        with open(server_log, "wb") as sink:
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=server_env(install),
                                       start_new_session=True, preexec_fn=_die_with_parent)
        log.info("starting Triton (%s instance(s), max batch %d, queue delay %d us)", options.instances,
                 options.max_batch, options.max_queue_delay_us)
        deadline = time.monotonic() + options.ready_timeout_s
        while not ready(options.http_port):
            if process.poll() is not None:
                raise ServeError(f"tritonserver exited with status {process.returncode} before the model was ready:\n"
                                 f"{tail(server_log)}")
            if stop["signal"] is not None:
                return 0
            if time.monotonic() > deadline:
                raise ServeError(f"the model was not ready after {options.ready_timeout_s:.0f} s:\n{tail(server_log)}")
            time.sleep(0.2)
        print(f"serving {artifact.name} as model '{MODEL}': HTTP :{options.http_port}, gRPC :{options.grpc_port}, "
              f"metrics :{options.metrics_port}/metrics; ready: /v2/health/ready", flush=True)
        if on_ready is not None:
            on_ready()
        while stop["signal"] is None and process.poll() is None:
            time.sleep(0.2)
        if process.poll() is not None:
            raise ServeError(f"tritonserver stopped unexpectedly (status {process.returncode}):\n{tail(server_log)}")
        log.info("signal %d: stopping Triton", stop["signal"])
        return 0
    finally:
        if process is not None:
            _stop(process)
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(root, ignore_errors=True)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (Triton finishes in-flight requests, then unloads), SIGKILL to the whole group after 20 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the backend stubs too, if any is left
    process.wait()
