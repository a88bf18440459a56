"""Step 5 of PAR: density-peak distinctiveness on a kNN graph (internal redundancy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from par_export.reduce.checks import token_bound
from par_export.reduce.retrieval import min_max


def cosine_similarity_matrix(tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``S = X X^T`` of L2-normalized tokens: ``[B, N, D]`` -> ``[B, N, N]`` float32."""
    keys = F.normalize(tokens.float(), dim=-1, eps=eps)
    return keys @ keys.transpose(1, 2)


def density_peaks(
    similarity: torch.Tensor, k_nn: int, token_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density ``rho`` and separation ``delta`` of density-peak clustering.

    ``rho_i = exp(-mean_{j in kNN(i)} (1 - S_ij))`` over the ``k_nn`` nearest other
    tokens; ``delta_i`` is the distance ``1 - S_ij`` to the nearest token ``j`` that
    comes before ``i`` in density order (denser, or equally dense with a lower
    index), and the largest distance for the first token in that order.

    With ``token_mask`` (a batch of images with different N, padded) every image is computed
    as if alone: neighbours, denser tokens and distances are among its real tokens, and its
    neighbour count is ``min(k_nn, N_b - 1)``; padded tokens' values are meaningless.

    Args:
        similarity: ``[B, N, N]`` cosine similarity.
        token_mask: ``[B, N]`` bool, ``True`` for real tokens; ``None`` = all real.
    Returns:
        density ``[B, N]``, separation ``[B, N]``, both float32.
    """
    n = similarity.shape[-1]
    distance = 1.0 - similarity
    index = torch.arange(n, device=similarity.device)
    self_mask = index.unsqueeze(0) == index.unsqueeze(1)  # not torch.eye: ONNX Runtime has no bool EyeLike
    k = max(1, min(k_nn, token_bound(similarity, -1) - 1))
    if token_mask is None:
        nearest = torch.topk(distance.masked_fill(self_mask, float("inf")), k, dim=-1, largest=False).values
        density = torch.exp(-nearest.mean(dim=-1))  # [B, N]
    else:
        real_j = token_mask.unsqueeze(1)  # [B, 1, N]
        nearest = torch.topk(distance.masked_fill(self_mask | ~real_j, float("inf")), k, dim=-1, largest=False).values
        count = (token_mask.sum(dim=-1) - 1).clamp(1, k).view(-1, 1, 1)  # [B, 1, 1] neighbours per image
        taken = torch.arange(k, device=similarity.device).view(1, 1, -1) < count
        total = torch.where(taken, nearest, torch.zeros_like(nearest)).sum(dim=-1)
        density = torch.exp(-total / count.squeeze(-1).to(nearest.dtype))
        distance = distance.masked_fill(~real_j, float("-inf"))  # padded tokens are nobody's denser neighbour

    rho_i = density.unsqueeze(-1)  # [B, N, 1]
    rho_j = density.unsqueeze(-2)  # [B, 1, N]
    lower_index = index.unsqueeze(0) < index.unsqueeze(1)  # [N, N]: j < i
    precedes = (rho_j > rho_i) | ((rho_j == rho_i) & lower_index)  # [B, N, N]: j before i
    if token_mask is not None:
        precedes = precedes & token_mask.unsqueeze(1)
    nearest_denser = distance.masked_fill(~precedes, float("inf")).amin(dim=-1)
    has_denser = precedes.any(dim=-1)
    separation = torch.where(has_denser, nearest_denser, distance.amax(dim=-1))
    return density, separation


def distinctiveness(
    density: torch.Tensor, separation: torch.Tensor, eps: float = 1e-6, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``d_i = rho_i * delta_i``, min-max normalized per image to ``[0, 1]``: ``[B, N]``."""
    return min_max(density * separation, eps, token_mask)
