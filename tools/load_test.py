#!/usr/bin/env python3
"""Load test of a ``par-export serve`` server with ``tritonclient`` (HTTP or gRPC).

For each concurrency level, ``--requests`` requests (a set of demo scenes and their questions,
PNG bytes + prompt) are sent by that many client threads at once; it reports p50/p95/p99 latency,
throughput, the batch sizes the server formed (Triton's per-model statistics, read before and
after each level) and checks **every** response against the offline ``par-export run`` result for
the same image and prompt (equal K and kept indices; embeddings within the artifact precision's
bound). Exit status 1 if any response differs or fails.

    par-export serve ART --http-port 8000 --grpc-port 8001 &
    python tools/load_test.py ART --url localhost:8001 --protocol grpc --concurrency 1 4 16 64 --out out/load
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODEL = "par_reduce"


def client_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def make_inputs(module, prompt: str | None, image: bytes | None, budget: int | None = None) -> list:
    """The request's tensors: ``prompt`` and ``image`` BYTES ``[1, 1]`` (+ ``budget`` INT64 ``[1, 1]``);
    ``None`` leaves an input out."""
    tensors = []
    for name, value in (("prompt", None if prompt is None else prompt.encode()), ("image", image)):
        if value is None:
            continue
        tensor = module.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[value]], dtype=object))
        tensors.append(tensor)
    if budget is not None:
        tensor = module.InferInput("budget", [1, 1], "INT64")
        tensor.set_data_from_numpy(np.array([[budget]], np.int64))
        tensors.append(tensor)
    return tensors


def demo_requests(count: int, seed: int = 3_000_000) -> list[tuple[str, bytes]]:
    """``count`` (question, PNG bytes) pairs of the demo's procedural scenes (seeds outside every split)."""
    from par_export.data.vqa import render, sample

    pairs = []
    for i in range(count):
        s = sample(seed + i)
        buffer = io.BytesIO()
        render(s).save(buffer, format="PNG")
        pairs.append((s.question, buffer.getvalue()))
    return pairs


def offline_results(artifact: Path, pairs: list[tuple[str, bytes]]) -> list[dict]:
    """``par-export run``'s result for each pair (its library call, same artifact)."""
    from par_export.engine.run import run_image

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (prompt, image) in enumerate(pairs):
            path = Path(tmp) / f"{i}.png"
            path.write_bytes(image)
            result = run_image(artifact, path, prompt)
            out.append({"num_kept": result["num_kept"], "keep_index": np.asarray(result["keep_index"]),
                        "image_embeds": np.asarray(result["image_embeds"], np.float32)})
    return out


def parity_bound(artifact: Path) -> float:
    """Max abs error allowed between server and offline rows: the precision's verify bound."""
    from par_export.artifact import read_manifest
    from par_export.export.validate import TOLERANCES

    tolerance = TOLERANCES[read_manifest(artifact).precision]
    return tolerance.get("max_abs_error", 0.0) or tolerance["max_rel_error"]


def compare(response: dict, reference: dict, bound: float) -> str | None:
    """``None`` if the server's answer equals the offline one, else what differs."""
    k = int(response["num_kept"][0, 0])
    if k != reference["num_kept"]:
        return f"K {k} != {reference['num_kept']}"
    if not np.array_equal(response["keep_index"][0, :k], reference["keep_index"]):
        return "kept indices differ"
    rows = response["image_embeds"][0, :reference["image_embeds"].shape[0]]
    scale = max(1.0, float(np.abs(reference["image_embeds"]).max()))
    error = float(np.abs(rows - reference["image_embeds"]).max())
    if error > bound * scale:
        return f"embeddings differ by {error:.3g} (bound {bound * scale:.3g})"
    return None


def batch_counts(client, protocol: str) -> dict[int, int]:
    """Executions per batch size so far, from Triton's model statistics."""
    stats = client.get_inference_statistics(MODEL, as_json=True) if protocol == "grpc" else \
        client.get_inference_statistics(MODEL)
    counts: dict[int, int] = {}
    for model in stats.get("model_stats", []):
        for entry in model.get("batch_stats", []):
            counts[int(entry["batch_size"])] = counts.get(int(entry["batch_size"]), 0) + \
                int(entry["compute_infer"]["count"])
    return counts


def run_level(url: str, protocol: str, concurrency: int, total: int, pairs, references, bound) -> dict:
    module = client_module(protocol)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker():
        client = module.InferenceServerClient(url)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            prompt, image = pairs[i % len(pairs)]
            start = time.perf_counter()
            try:
                result = client.infer(MODEL, make_inputs(module, prompt, image))
                elapsed = time.perf_counter() - start
                response = {name: result.as_numpy(name) for name in ("num_kept", "keep_index", "image_embeds")}
                problem = compare(response, references[i % len(pairs)], bound)
            except Exception as err:  # noqa: BLE001 - every failure is counted and reported
                elapsed, problem = time.perf_counter() - start, f"{type(err).__name__}: {err}"
            with lock:
                latencies.append(elapsed)
                if problem:
                    failures.append(f"request {i}: {problem}")

    stats_client = module.InferenceServerClient(url)
    before = batch_counts(stats_client, protocol)
    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = batch_counts(stats_client, protocol)
    deadline = time.monotonic() + 2.0  # Triton updates its statistics just after the last response goes out
    while sum(b * (n - before.get(b, 0)) for b, n in after.items()) < total and time.monotonic() < deadline:
        time.sleep(0.1)
        after = batch_counts(stats_client, protocol)
    batches = {b: after.get(b, 0) - before.get(b, 0) for b in sorted(after) if after.get(b, 0) > before.get(b, 0)}
    ms = np.array(latencies) * 1e3
    return {"concurrency": concurrency, "requests": total, "wall_s": wall, "throughput_rps": total / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_batch": (sum(b * n for b, n in batches.items())
                                                                    / max(1, sum(batches.values()))),
            "batches": batches, "mismatches": len(failures), "first_mismatches": failures[:5]}


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, left = plt.subplots(figsize=(6.5, 4))
    levels = [r["concurrency"] for r in rows]
    left.plot(levels, [r["throughput_rps"] for r in rows], "o-", color="tab:blue", label="throughput (requests/s)")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="throughput (requests/s)")
    left.set_xticks(levels, [str(c) for c in levels])
    right = left.twinx()
    right.plot(levels, [r["p99_ms"] for r in rows], "s--", color="tab:red", label="p99 latency (ms)")
    right.set(ylabel="p99 latency (ms)")
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=8)
    left.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="the artifact the server serves (for the offline reference)")
    parser.add_argument("--url", default="localhost:8001", help="server address (gRPC port for grpc, HTTP for http)")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=256, help="requests per concurrency level")
    parser.add_argument("--distinct", type=int, default=32, help="distinct (image, prompt) pairs, cycled")
    parser.add_argument("--out", type=Path, default=None, help="folder for load_test.json and load_test.png")
    parser.add_argument("--note", default="", help="what to state with the figures (server flags, machine)")
    args = parser.parse_args(argv)
    pairs = demo_requests(args.distinct)
    print(f"offline reference: par-export run on {len(pairs)} (image, prompt) pairs", file=sys.stderr, flush=True)
    references = offline_results(args.artifact, pairs)
    bound = parity_bound(args.artifact)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    rows = []
    print(f"{'clients':>7} {'req':>5} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'mean batch':>10} "
          f"{'mismatches':>10}  batches formed (size: count)")
    for level in args.concurrency:
        load = os.getloadavg()[0]
        row = run_level(args.url, args.protocol, level, args.requests, pairs, references, bound)
        row["load_before"] = load
        rows.append(row)
        print(f"{level:>7} {row['requests']:>5} {row['throughput_rps']:>7.1f} {row['p50_ms']:>8.1f} "
              f"{row['p95_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['mean_batch']:>10.2f} {row['mismatches']:>10}  "
              + ", ".join(f"{b}: {n}" for b, n in row["batches"].items()), flush=True)
        for line in row["first_mismatches"]:
            print(f"  {line}", file=sys.stderr)
    result = {"rows": rows, "protocol": args.protocol, "machine": machine, "note": args.note,
              "when": time.strftime("%Y-%m-%d %H:%M:%S"), "parity_bound": bound}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "load_test.json").write_text(json.dumps(result, indent=2))
        plot(rows, args.out / "load_test.png", f"par-export serve, {args.protocol}, {machine}; "
             f"n={args.requests} requests per point. {args.note}")
        print(f"wrote {args.out / 'load_test.json'} and load_test.png", file=sys.stderr)
    bad = sum(r["mismatches"] for r in rows)
    if bad:
        print(f"{bad} response(s) differ from the offline result or failed", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
