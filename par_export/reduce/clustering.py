"""Step 5 of PAR: density-peak distinctiveness on a kNN graph (internal redundancy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from par_export.reduce.retrieval import min_max


def cosine_similarity_matrix(tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``S = X X^T`` of L2-normalized tokens: ``[B, N, D]`` -> ``[B, N, N]`` float32."""
    keys = F.normalize(tokens.float(), dim=-1, eps=eps)
    return keys @ keys.transpose(1, 2)


def distinctiveness(similarity: torch.Tensor, k_nn: int, eps: float = 1e-6) -> torch.Tensor:
    """Density-peak score ``d_i = rho_i * delta_i``, min-max normalized per image.

    ``rho_i = exp(-mean_{j in kNN(i)} (1 - S_ij))`` over the ``k_nn`` nearest other
    tokens; ``delta_i`` is the distance to the nearest token that comes before ``i``
    in density order (denser, or equally dense with a lower index), and the
    largest distance for the first token in that order.

    Args:
        similarity: ``[B, N, N]`` cosine similarity.
    Returns:
        ``[B, N]`` float32 in ``[0, 1]``.
    """
    n = similarity.shape[-1]
    distance = 1.0 - similarity
    self_mask = torch.eye(n, dtype=torch.bool, device=similarity.device)
    k = max(1, min(k_nn, n - 1))
    nearest = torch.topk(distance.masked_fill(self_mask, float("inf")), k, dim=-1, largest=False).values
    density = torch.exp(-nearest.mean(dim=-1))  # [B, N]

    rho_i = density.unsqueeze(-1)  # [B, N, 1]
    rho_j = density.unsqueeze(-2)  # [B, 1, N]
    index = torch.arange(n, device=similarity.device)
    lower_index = index.unsqueeze(0) < index.unsqueeze(1)  # [N, N]: j < i
    precedes = (rho_j > rho_i) | ((rho_j == rho_i) & lower_index)  # [B, N, N]: j before i
    nearest_denser = distance.masked_fill(~precedes, float("inf")).amin(dim=-1)
    has_denser = precedes.any(dim=-1)
    separation = torch.where(has_denser, nearest_denser, distance.amax(dim=-1))
    return min_max(density * separation, eps)
