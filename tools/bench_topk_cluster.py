#!/usr/bin/env python3
"""Time the par::TopKCluster CUDA kernels against the standard-ops path (needs a CUDA GPU).

The standard-ops path is the reference ``topk_cluster`` run by torch on the GPU: the
same TopK/gather/ArgMax/OneHot-matmul ops the standard ONNX graph holds. Prints both
times and their ratio per shape, and the max error, labelled with the device.

    python tools/bench_topk_cluster.py --batch 1 8 --dtype fp16
"""

from __future__ import annotations

import argparse
import ctypes

import torch

from par_export.plugins import build_plugin
from par_export.reduce.topk_cluster import topk_cluster

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cuda_time(fn, repeats: int = 50) -> float:
    """Median milliseconds of ``fn`` with CUDA events."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, nargs="+", default=[576, 2304])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--k-max", type=int, default=192)
    parser.add_argument("--dtype", choices=DTYPES, default="fp16")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_topk_cluster needs a CUDA device")
    major, minor = torch.cuda.get_device_capability()
    lib = ctypes.CDLL(str(build_plugin(archs=(f"{major}{minor}",))))
    lib.parTopKClusterWorkspaceSize.restype = ctypes.c_size_t
    dtype = DTYPES[args.dtype]
    print(f"device: {torch.cuda.get_device_name()}; tokens {args.dtype}, D={args.dim}, k_max={args.k_max}")
    print(f"{'batch':>5} {'N':>5} {'kernel ms':>10} {'std-ops ms':>11} {'kernel/std':>10} {'max err':>9}")
    for n in args.tokens:
        for b in args.batch:
            tokens = torch.randn(b, n, args.dim, device="cuda", dtype=dtype)
            scores, relevance = torch.rand(b, n, device="cuda"), torch.randn(b, n, device="cuda")
            num_kept = torch.full((b,), args.k_max // 2, device="cuda", dtype=torch.int64)
            outs = [torch.empty(b, args.k_max, args.dim, device="cuda", dtype=dtype),
                    torch.empty(b, args.k_max, device="cuda", dtype=torch.int64),
                    torch.empty(b, n, device="cuda", dtype=torch.int64),
                    torch.empty(b, device="cuda", dtype=torch.int64)]
            workspace = torch.empty(int(lib.parTopKClusterWorkspaceSize(b, n)), device="cuda", dtype=torch.uint8)
            pointers = [ctypes.c_void_p(t.data_ptr()) for t in (tokens, scores, relevance, num_kept, *outs, workspace)]

            def kernel():
                lib.parTopKClusterLaunch(b, n, args.dim, args.k_max, ctypes.c_float(1.0), ctypes.c_float(1.0), 0,
                                         {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dtype], 1, *pointers,
                                         ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))

            def standard():
                return topk_cluster(tokens, scores, relevance, num_kept, args.k_max)

            kernel_ms, standard_ms = cuda_time(kernel), cuda_time(standard)
            reference = standard()
            error = (outs[0].float() - reference[0].float()).abs().max().item()
            print(f"{b:>5} {n:>5} {kernel_ms:>10.3f} {standard_ms:>11.3f} {kernel_ms / standard_ms:>10.2f} {error:>9.2e}")


if __name__ == "__main__":
    main()
