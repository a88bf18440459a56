"""CUDA kernels of par::TopKCluster against the torch reference (needs a CUDA GPU).

Run on a GPU machine: ``pytest tests/gpu -m gpu``. The kernels are called through
their C entry point ``parTopKClusterLaunch`` with ctypes on torch CUDA tensors.
"""

from __future__ import annotations

import ctypes
import shutil

import pytest
import torch

from par_export.reduce.topk_cluster import topk_cluster

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to build the kernels"),
]

TOKEN_TYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
INDEX_TYPES = {torch.int32: 0, torch.int64: 1}


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    from par_export.plugins import build_plugin

    major, minor = torch.cuda.get_device_capability()
    lib = ctypes.CDLL(str(build_plugin(archs=(f"{major}{minor}",), out_dir=tmp_path_factory.mktemp("gpu"))))
    lib.parTopKClusterLaunch.restype = ctypes.c_int32
    lib.parTopKClusterLaunchClustered.restype = ctypes.c_int32
    lib.parTopKClusterWorkspaceSize.restype = ctypes.c_size_t
    return lib


def run_kernel(lib, tokens, scores, relevance, num_kept, k_max, gamma=1.0, tau=1.0, router="merge",
               cluster_tokens=None):
    b, n, d = tokens.shape
    merged = torch.empty(b, k_max, d, dtype=tokens.dtype, device="cuda")
    keep_index = torch.empty(b, k_max, dtype=num_kept.dtype, device="cuda")
    assignment = torch.empty(b, n, dtype=num_kept.dtype, device="cuda")
    kept = torch.empty(b, dtype=num_kept.dtype, device="cuda")
    workspace = torch.empty(int(lib.parTopKClusterWorkspaceSize(b, n)), dtype=torch.uint8, device="cuda")
    head = (b, n, d, k_max, ctypes.c_float(gamma), ctypes.c_float(tau), 1 if router == "keep" else 0,
            TOKEN_TYPES[tokens.dtype], INDEX_TYPES[num_kept.dtype],
            *(ctypes.c_void_p(t.data_ptr()) for t in (tokens, scores, relevance, num_kept)))
    tail = (*(ctypes.c_void_p(t.data_ptr()) for t in (merged, keep_index, assignment, kept, workspace)),
            ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
    if cluster_tokens is None:
        status = lib.parTopKClusterLaunch(*head, *tail)
    else:
        status = lib.parTopKClusterLaunchClustered(*head, ctypes.c_void_p(cluster_tokens.data_ptr()),
                                                   cluster_tokens.shape[-1], *tail)
    torch.cuda.synchronize()
    assert status == 0
    return merged, keep_index, assignment, kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("n, d, k_max", [(64, 32, 16), (576, 1024, 192), (577, 64, 64), (4096, 64, 256)])
@pytest.mark.parametrize("router", ["merge", "keep"])
def test_kernel_matches_reference(kernels, dtype, index_dtype, n, d, k_max, router):
    gen = torch.Generator(device="cuda").manual_seed(n + d)
    b = 3
    tokens = torch.randn(b, n, d, device="cuda", generator=gen).to(dtype)
    scores = torch.rand(b, n, device="cuda", generator=gen)
    relevance = torch.randn(b, n, device="cuda", generator=gen)
    num_kept = torch.tensor([1, k_max // 2, k_max], device="cuda", dtype=index_dtype)
    out = run_kernel(kernels, tokens, scores, relevance, num_kept, k_max, router=router)
    ref = topk_cluster(tokens.float(), scores, relevance, num_kept.long(), k_max, router=router)
    assert torch.equal(out[1].long(), ref[1]) and torch.equal(out[3].long(), ref[3])
    agreement = (out[2].long() == ref[2]).float().mean().item()
    assert agreement >= (1.0 if dtype == torch.float32 else 0.99)
    if agreement == 1.0:
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
        torch.testing.assert_close(out[0].float(), ref[0].to(dtype).float(), atol=tol, rtol=tol)


def test_out_of_range_k_is_clamped(kernels):
    tokens = torch.randn(3, 32, 8, device="cuda")
    scores, relevance = torch.rand(3, 32, device="cuda"), torch.randn(3, 32, device="cuda")
    *_, kept = run_kernel(kernels, tokens, scores, relevance, torch.tensor([0, -5, 100], device="cuda"), 8)
    assert kept.tolist() == [1, 1, 8]


def test_ties_go_to_lower_index(kernels):
    tokens = torch.randn(1, 64, 8, device="cuda")
    scores = torch.zeros(1, 64, device="cuda")
    _, keep_index, _, _ = run_kernel(kernels, tokens, scores, torch.zeros(1, 64, device="cuda"),
                                     torch.tensor([5], device="cuda"), 5)
    assert keep_index[0].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n, d, dc, k_max", [(576, 4096, 1024, 64), (2880, 64, 16, 192)])
def test_clustered_kernel_routes_on_the_cluster_tokens(kernels, dtype, n, d, dc, k_max):
    """The 5-input form (LLaVA in LLM space: merge 4096-wide rows, route on the 1024-wide tower tokens)."""
    gen = torch.Generator(device="cuda").manual_seed(n + dc)
    tokens = torch.randn(2, n, d, device="cuda", generator=gen).to(dtype)
    cluster = torch.randn(2, n, dc, device="cuda", generator=gen).to(dtype)
    scores, relevance = torch.rand(2, n, device="cuda", generator=gen), torch.randn(2, n, device="cuda", generator=gen)
    num_kept = torch.tensor([k_max // 2, k_max], device="cuda")
    out = run_kernel(kernels, tokens, scores, relevance, num_kept, k_max, cluster_tokens=cluster)
    ref = topk_cluster(tokens.float(), scores, relevance, num_kept, k_max, cluster_tokens=cluster.float())
    assert torch.equal(out[1].long(), ref[1]) and torch.equal(out[3].long(), ref[3])
    agreement = (out[2].long() == ref[2]).float().mean().item()
    assert agreement >= (1.0 if dtype == torch.float32 else 0.99)
    if agreement == 1.0:
        tol = {torch.float32: 1e-5, torch.float16: 2e-3}[dtype]
        torch.testing.assert_close(out[0].float(), ref[0].to(dtype).float(), atol=tol, rtol=tol)
