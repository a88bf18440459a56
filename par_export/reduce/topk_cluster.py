"""Steps 5-6 of PAR with a dynamic K as one function: the semantics of ``par::TopKCluster``.

The exported custom op, the CUDA kernel behind the TensorRT plugin and the ONNX
Runtime CPU op all compute exactly this; tests hold them to it.
"""

from __future__ import annotations

import torch

from par_export.reduce.checks import token_bound
from par_export.reduce.clustering import cosine_similarity_matrix
from par_export.reduce.merge import merge_tokens
from par_export.reduce.router import center_slots, route_to_centers, select_centers

ROUTERS = ("merge", "keep")

# The ONNX node of this function (``export --plugin``) and its TensorRT plugin: ``par::TopKCluster``
# version 1 (par_export/export/custom_op.py traces it; backends/ort_custom_op.py runs it on CPU).
DOMAIN = "par"
OP_TYPE = "TopKCluster"
VERSION = "1"



def topk_cluster(
    tokens: torch.Tensor,
    scores: torch.Tensor,
    relevance: torch.Tensor,
    num_kept: torch.Tensor,
    k_max: int,
    gamma: float = 1.0,
    tau: float = 1.0,
    router: str = "merge",
    similarity: torch.Tensor | None = None,
    cluster_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-K centers by ``scores``, every token routed to its most similar center, weighted merge.

    Args:
        tokens: ``[B, N, D]``.
        scores: ``[B, N]`` router score (higher = center first; ties: lower index).
        relevance: ``[B, N]`` standardized relevance ``z``: merge weights
            ``softmax(z / tau)`` within a cluster; non-centers with ``z <= -gamma`` are dropped.
        num_kept: ``[B]`` int, K per image; clamped to ``[1, min(k_max, N)]``.
        k_max: output width (static).
        router: ``"merge"`` or ``"keep"`` (centers unmerged, the rest dropped).
        similarity: ``[B, N, N]`` cosine similarity of the routing tokens if already computed.
        cluster_tokens: ``[B, N, Dc]``: the same tokens in the space routing compares them in
            (the op's optional 5th input); ``None``: routing compares ``tokens``.
    Returns:
        merged ``[B, k_max, D]`` (tokens' dtype, zero past K), keep_index ``[B, k_max]``
        int64 (ascending, -1 past K), assignment ``[B, N]`` int64 (slot or -1),
        num_kept ``[B]`` int64.
    """
    n = tokens.shape[1]  # traced as a size, so a dynamic token axis stays dynamic
    width = min(int(k_max), token_bound(tokens))
    kept = num_kept.to(torch.int64).clamp(1, width)
    keep_index, valid = select_centers(scores.float(), kept, width)
    own = center_slots(keep_index, valid, n)
    if router == "keep":
        assignment = own
    else:
        compared = tokens if cluster_tokens is None else cluster_tokens
        sim = similarity if similarity is not None else cosine_similarity_matrix(compared)
        routed = route_to_centers(sim, keep_index, valid, own)
        assignment = torch.where((own >= 0) | (relevance > -gamma), routed, torch.full_like(routed, -1))
    merged = merge_tokens(tokens, assignment, relevance.float() / tau, width).to(tokens.dtype)
    if width < k_max:  # pad to the declared width when N < k_max
        pad = k_max - width
        merged = torch.nn.functional.pad(merged, (0, 0, 0, pad))
        keep_index = torch.nn.functional.pad(keep_index, (0, pad), value=-1)
    return merged, keep_index, assignment, kept
