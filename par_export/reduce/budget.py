"""Step 4 of PAR: how many tokens each image keeps (fixed or adaptive K)."""

from __future__ import annotations

import torch

from par_export.reduce.checks import token_bound


def adaptive_budget(
    z: torch.Tensor, alpha: float, k_min: int, k_max: int, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``K = clamp(#{i : z_i > alpha}, k_min, k_max)`` per image.

    Args:
        z: ``[B, N]`` standardized relevance.
        token_mask: ``[B, N]`` bool, ``True`` for real tokens; ``None`` = all real.
    Returns:
        ``[B]`` int64, additionally capped at each image's number of (real) tokens.
    """
    n = token_bound(z, -1)
    if token_mask is None:
        count = (z > alpha).sum(dim=-1)
        return count.clamp(min=min(k_min, n), max=min(k_max, n)).to(torch.int64)
    count = ((z > alpha) & token_mask).sum(dim=-1).to(torch.int64)
    real = token_mask.sum(dim=-1).to(torch.int64)
    low = torch.minimum(real, torch.full_like(real, k_min))
    high = torch.minimum(real, torch.full_like(real, k_max))
    return torch.minimum(torch.maximum(count, low), high)


def cap_to_tokens(num_kept: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """``[B]`` K per image, at most that image's number of real tokens (``token_mask [B, N]``)."""
    if token_mask is None:
        return num_kept
    return torch.minimum(num_kept.to(torch.int64), token_mask.sum(dim=-1).to(torch.int64))


def fixed_budget(budget: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """A fixed K (python int or 0-d int tensor) broadcast to ``[B]`` int64."""
    k = torch.as_tensor(budget, dtype=torch.int64, device=device)
    return k.reshape(()).expand(batch)


def valid_slots(num_kept: torch.Tensor, width: int) -> torch.Tensor:
    """``[B]`` counts -> ``[B, width]`` bool, ``True`` for the first ``num_kept`` slots."""
    slots = torch.arange(width, device=num_kept.device)
    return slots.unsqueeze(0) < num_kept.unsqueeze(-1)
