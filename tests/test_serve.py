"""``par-export serve``: the request service offline, then a real Triton server on free ports.

The server tests need ``tritonserver`` (nvidia-pytriton) in an environment with numpy<2 (its
Python backend stub is built against NumPy 1.x): ``.venv-serve``, which ``.ci/run`` makes, or
``$PAR_SERVE_PYTHON``. They skip, saying so, where no such environment exists.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from par_export.cli import build_parser
from par_export.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
MODEL = "par_reduce"


def png(color=(200, 30, 30), size=(40, 30), seed=0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.normal(0, 40, (*size[::-1], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    assert cli(["build", "--model", "tiny", "--fp32", "--backend", "onnxruntime", "--budget", "16",
                "--out", str(root / "art")]) == 0
    return root / "art"


def offline(artifact: Path, image: bytes, prompt: str, tmp: Path, budget=None) -> dict:
    from par_export.engine.run import run_image

    path = tmp / f"{abs(hash((image, prompt)))}.png"
    path.write_bytes(image)
    return run_image(artifact, path, prompt, budget=budget)


# ------------------------------------------------------------------------------ offline service
def test_service_answers_good_requests_like_run_and_bad_ones_alone(artifact, tmp_path):
    from par_export.serving.service import Reduced, ReduceRequest, ReductionService, RequestError

    good = [ReduceRequest(prompt=p, image=png(c, seed=i)) for i, (p, c) in
            enumerate([("what color is the circle ?", (200, 30, 30)), ("is there a star ?", (30, 30, 200)),
                       ("how many square are there ?", (30, 200, 30))])]
    bad = {"prompt is empty": ReduceRequest(prompt="  ", image=png()),
           "characters; at most": ReduceRequest(prompt="red " * 25_000, image=png()),
           "not a readable image": ReduceRequest(prompt="red", image=b"\x89PNG not really"),
           "budget must be in [1, 64]": ReduceRequest(prompt="red", image=png(), budget=0),
           "exactly one of 'image'": ReduceRequest(prompt="red"),
           "missing 'prompt'": ReduceRequest(image=png()),
           "pixel_values must be [3,": ReduceRequest(prompt="red", pixel_values=np.zeros((3, 5, 5), np.float32))}
    requests = [good[0], *bad.values(), good[1], good[2]]
    with ReductionService(artifact) as service:
        results = service.infer(requests)
        assert [type(r) for r in results] == [Reduced] + [RequestError] * len(bad) + [Reduced, Reduced]
        for (expected, _), result in zip(bad.items(), results[1:1 + len(bad)]):
            assert expected in str(result) and "\n" not in str(result)
        for request, result in zip(good, [results[0], results[-2], results[-1]]):
            reference = offline(artifact, request.image, request.prompt, tmp_path)
            assert result.num_kept == reference["num_kept"]
            assert result.keep_index.tolist() == reference["keep_index"]
            np.testing.assert_allclose(result.image_embeds, reference["image_embeds"], rtol=1e-5, atol=1e-6)
        # the same image as processor pixels, and the prompt as the query's token ids, give the same answer
        pixels = offline(artifact, good[0].image, good[0].prompt, tmp_path)["pixel_values"][0]
        ids = service.query.tokenizer(["a photo of what color is the circle ?"])["input_ids"][0]
        twin = service.infer([ReduceRequest(input_ids=np.array(ids), pixel_values=pixels)])[0]
        assert twin.keep_index.tolist() == results[0].keep_index.tolist()
        np.testing.assert_allclose(twin.image_embeds, results[0].image_embeds, rtol=1e-5, atol=1e-6)
        outside = service.infer([ReduceRequest(input_ids=np.array([10 ** 6]), image=png())])[0]
        assert "input_ids must be in [0," in str(outside)


def test_serve_refuses_numpy_2_through_the_cli(artifact, capsys):
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("this environment has numpy<2, where serve starts (the server tests below cover it)")
    assert cli(["serve", str(artifact), "--http-port", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("par-export serve: error: serve needs numpy<2") and "\n" not in err


def test_serve_model_config_is_one_triton_parses(artifact):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from par_export.serving.server import ServeOptions, model_config

    text = model_config(artifact, 32, ServeOptions(max_batch=4, max_queue_delay_us=500, instances=3))
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert (config.name, config.backend, config.max_batch_size) == ("par_reduce", "python", 4)
    assert config.dynamic_batching.max_queue_delay_microseconds == 500 and config.instance_group[0].count == 3
    assert all(i.optional and i.allow_ragged_batch for i in config.input)
    assert [o.name for o in config.output] == ["image_embeds", "num_kept", "keep_index"]
    assert list(config.output[0].dims) == [-1, 32]
    assert config.parameters["artifact"].string_value == str(artifact)


def test_kubernetes_manifest_is_a_valid_deployment_of_serve():
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "par-export-serve.yaml").read_text()))
    kinds = {d["kind"]: d for d in documents}
    assert set(kinds) == {"Deployment", "Service"}
    deployment, service = kinds["Deployment"], kinds["Service"]
    assert deployment["apiVersion"] == "apps/v1" and service["apiVersion"] == "v1"
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = spec["template"]["spec"]["containers"]
    command = container["command"] + container.get("args", [])
    assert command[:2] == ["par-export", "serve"]
    args = build_parser().parse_args(command[1:])  # the flags are the CLI's own
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert any(args.artifact.startswith(m) for m in mounts)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)


# ------------------------------------------------------------------------------ a real server
def serve_python() -> str | None:
    """An interpreter with numpy<2 and nvidia-pytriton: $PAR_SERVE_PYTHON, .venv-serve, or this one."""
    candidates = [os.environ.get("PAR_SERVE_PYTHON"), str(ROOT / ".venv-serve" / "bin" / "python"), sys.executable]
    probe = ("import importlib.util, numpy, sys; sys.exit(0 if numpy.__version__ < '2' and "
             "importlib.util.find_spec('pytriton') else 1)")
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and subprocess.run([candidate, "-c", probe]).returncode == 0:
            return candidate
    return None


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def processes_with(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class Server:
    """``python -m par_export.cli serve ARTIFACT`` in the serve environment, on free ports."""

    def __init__(self, python: str, artifact: Path, *flags: str):
        self.http, self.grpc, self.metrics = free_ports(3)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the checkout under test
        self.process = subprocess.Popen(
            [python, "-m", "par_export.cli", "serve", str(artifact), "--http-port", str(self.http),
             "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        self.output: list[str] = []
        self.reader = threading.Thread(target=lambda: self.output.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.reader.join(5)
                pytest.fail(f"serve exited with {self.process.returncode}: {''.join(self.output)[-2000:]}")
            if any(line.startswith("serving ") for line in self.output):
                return
            time.sleep(0.2)
        pytest.fail(f"serve was not ready after {timeout} s: {''.join(self.output)[-2000:]}")

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        finally:
            self.reader.join(5)


@pytest.fixture(scope="module")
def server(artifact):
    python = serve_python()
    if python is None:
        pytest.skip("no environment with numpy<2 and nvidia-pytriton (tritonserver) to start a server in: "
                    ".ci/run makes .venv-serve; or set PAR_SERVE_PYTHON")
    server = Server(python, artifact, "--max-batch", "8", "--max-queue-delay-us", "5000", "--instances", "2")
    server.wait_ready()
    yield server
    assert server.stop() == 0, "".join(server.output)[-2000:]
    assert processes_with(f"--http-port={server.http}") == [], "a tritonserver outlived serve"


def load_test_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("load_test", ROOT / "tools" / "load_test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def request(module, prompt=None, image=None, budget=None, extra=()):
    return load_test_tool().make_inputs(module, prompt, image, budget) + list(extra)


def test_server_answers_a_mix_of_good_and_bad_requests_under_concurrency(server, artifact, tmp_path):
    import tritonclient.grpc as grpc
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    good = [("what color is the circle ?", png((200, 30, 30), seed=i), None) for i in range(6)] + \
           [("is there a blue star ?", png((30, 30, 200), seed=10 + i), 8) for i in range(6)]
    wrong_dtype = grpc.InferInput("image", [1, 1], "FP32")
    wrong_dtype.set_data_from_numpy(np.zeros((1, 1), np.float32))
    bad_shape = grpc.InferInput("pixel_values", [1, 3, 5, 5], "FP32")
    bad_shape.set_data_from_numpy(np.zeros((1, 3, 5, 5), np.float32))
    bad = [(request(grpc, "red", png(), budget=0), "budget must be in [1, 64]"),
           (request(grpc, "red", png(), budget=65), "budget must be in [1, 64]"),
           (request(grpc, "red", b"not an image at all"), "not a readable image"),
           (request(grpc, "", png()), "prompt is empty"),
           (request(grpc, "x" * 100_000, png()), "characters; at most"),
           (request(grpc, "red"), "exactly one of 'image'"),
           (request(grpc, "red", extra=[wrong_dtype]), "'image' data-type is 'FP32', but model 'par_reduce' expects 'BYTES'"),
           (request(grpc, "red", extra=[bad_shape]), "pixel_values must be [3,")]
    references = [offline(artifact, image, prompt, tmp_path, budget) for prompt, image, budget in good]
    jobs = [("good", i) for i in range(len(good))] + [("bad", i) for i in range(len(bad))]
    jobs = jobs * 2  # every request twice, interleaved across 8 clients
    outcomes: dict[tuple, list] = {}
    lock = threading.Lock()

    def worker(mine):
        client = grpc.InferenceServerClient(f"127.0.0.1:{server.grpc}")
        for kind, i in mine:
            try:
                if kind == "good":
                    prompt, image, budget = good[i]
                    result = client.infer(MODEL, request(grpc, prompt, image, budget))
                    outcome = {n: result.as_numpy(n) for n in ("num_kept", "keep_index", "image_embeds")}
                else:
                    client.infer(MODEL, bad[i][0])
                    outcome = "answered"
            except InferenceServerException as err:
                outcome = err
            with lock:
                outcomes.setdefault((kind, i), []).append(outcome)

    threads = [threading.Thread(target=worker, args=(jobs[t::8],)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, reference in enumerate(references):
        for outcome in outcomes[("good", i)]:
            assert isinstance(outcome, dict), f"good request {i} failed: {outcome}"
            k = int(outcome["num_kept"][0, 0])
            assert k == reference["num_kept"] and outcome["keep_index"][0, :k].tolist() == reference["keep_index"]
            np.testing.assert_allclose(outcome["image_embeds"][0], reference["image_embeds"], rtol=1e-5, atol=1e-6)
    for i, (_, expected) in enumerate(bad):
        for outcome in outcomes[("bad", i)]:
            assert isinstance(outcome, InferenceServerException), f"bad request {i} was answered"
            assert expected in outcome.message(), outcome.message()
    # HTTP too, and Triton's health, readiness and metrics endpoints
    client = http.InferenceServerClient(f"127.0.0.1:{server.http}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    result = client.infer(MODEL, request(http, *good[0][:2]))
    assert result.as_numpy("keep_index")[0].tolist() == references[0]["keep_index"]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert f'nv_inference_request_success{{model="{MODEL}",version="1"}}' in metrics


def test_a_client_that_disconnects_does_not_stall_the_server(server, artifact, tmp_path):
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    prompt, image = "what color is the circle ?", png(seed=3)
    client = grpc.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    for _ in range(4):  # gRPC clients that give up long before the answer
        with pytest.raises(InferenceServerException):
            client.infer(MODEL, request(grpc, prompt, image), client_timeout=0.001)
    with socket.create_connection(("127.0.0.1", server.http)) as raw:  # an HTTP body cut off mid-request
        raw.sendall(f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                    '{"inputs": [{"name": "prompt"'.encode())
    start = time.monotonic()
    result = client.infer(MODEL, request(grpc, prompt, image), client_timeout=30)
    assert time.monotonic() - start < 30
    assert result.as_numpy("keep_index")[0].tolist() == offline(artifact, image, prompt, tmp_path)["keep_index"]


def test_load_test_tool_checks_every_response(server, artifact, tmp_path):
    assert load_test_tool().main([str(artifact), "--url", f"127.0.0.1:{server.grpc}", "--concurrency", "1", "4",
                        "--requests", "12", "--distinct", "4", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "load_test.json").read_text())
    assert [r["concurrency"] for r in result["rows"]] == [1, 4]
    assert all(r["mismatches"] == 0 and sum(b * n for b, n in r["batches"].items()) == 12 for r in
               [{**r, "batches": {int(b): n for b, n in r["batches"].items()}} for r in result["rows"]])
    assert (tmp_path / "load_test.png").stat().st_size > 0


def test_port_taken_and_sigkill_leave_no_server_behind(artifact):
    python = serve_python()
    if python is None:
        pytest.skip("no environment with numpy<2 and nvidia-pytriton (tritonserver): .ci/run makes .venv-serve")
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        taken = str(holder.getsockname()[1])
        run = subprocess.run([python, "-m", "par_export.cli", "serve", str(artifact), "--http-port", taken],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == (f"par-export serve: error: --http-port {taken}: the port is already in use; "
                                  "stop what holds it or pick another port")
    server = Server(python, artifact)
    server.wait_ready()
    assert processes_with(f"--http-port={server.http}")
    server.stop(signal.SIGKILL)  # no chance to clean up: the server must still go (PR_SET_PDEATHSIG)
    deadline = time.monotonic() + 30
    while processes_with(f"--http-port={server.http}") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_with(f"--http-port={server.http}") == []
