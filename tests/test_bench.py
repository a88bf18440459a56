"""tools/bench.py runs end to end and writes what docs/benchmarks.md quotes (no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from par_export.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def bench_main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "tools" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_kv_and_graph_write_their_results(tmp_path):
    from par_export.memory import kv_cache_bytes
    from par_export.models.geometries import LLAVA_GEOMETRIES

    assert cli(["build", "--model", "tiny", "--fp32", "--backend", "onnxruntime", "--budget", "16",
                "--out", str(tmp_path / "art")]) == 0
    assert bench_main(["kv", "graph", "--artifacts", str(tmp_path / "art"), "--rounds", "1", "--kept", "64",
                       "--out", str(tmp_path / "bench")]) == 0
    kv = json.loads((tmp_path / "bench" / "kv.json").read_text())
    config = LLAVA_GEOMETRIES["llava-1.5-7b"]()
    assert kv["rows"][0]["ratio"] == pytest.approx(kv_cache_bytes(config, 104) / kv_cache_bytes(config, 616))
    graph = json.loads((tmp_path / "bench" / "graph.json").read_text())
    assert [r["case"] for r in graph["rows"]] == ["batch=1 budget=16", "batch=2 budget=16", "batch=4 budget=16"]
    assert all(r["graph"] == "onnxruntime fp32" and r["a_ms"] > 0 and r["b_ms"] > 0 for r in graph["rows"])
    assert graph["device"].startswith("CPU") and graph["rounds"] == 1


@pytest.mark.slow  # builds a CLIP-L/336 tower
def test_reducer_benchmark_writes_rows_and_a_plot(tmp_path):
    assert bench_main(["reducer", "--methods", "par,random", "--batch", "1", "--crops", "1", "2", "--rounds", "1",
                       "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "reducer.json").read_text())
    methods = ("par", "random", "query_encoder")
    assert {(r["method"], r["n"]) for r in result["rows"]} == {(m, n) for m in methods for n in (576, 1152)}
    assert set(result["exponents"]) == {f"{m} batch 1" for m in methods} and (tmp_path / "reducer.png").stat().st_size
