"""Step 4 of PAR: how many tokens each image keeps (fixed or adaptive K)."""

from __future__ import annotations

import torch

from par_export.reduce.checks import token_bound


def adaptive_budget(z: torch.Tensor, alpha: float, k_min: int, k_max: int) -> torch.Tensor:
    """``K = clamp(#{i : z_i > alpha}, k_min, k_max)`` per image.

    Args:
        z: ``[B, N]`` standardized relevance.
    Returns:
        ``[B]`` int64, additionally capped at N.
    """
    n = token_bound(z, -1)
    count = (z > alpha).sum(dim=-1)
    return count.clamp(min=min(k_min, n), max=min(k_max, n)).to(torch.int64)


def fixed_budget(budget: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """A fixed K (python int or 0-d int tensor) broadcast to ``[B]`` int64."""
    k = torch.as_tensor(budget, dtype=torch.int64, device=device)
    return k.reshape(()).expand(batch)


def valid_slots(num_kept: torch.Tensor, width: int) -> torch.Tensor:
    """``[B]`` counts -> ``[B, width]`` bool, ``True`` for the first ``num_kept`` slots."""
    slots = torch.arange(width, device=num_kept.device)
    return slots.unsqueeze(0) < num_kept.unsqueeze(-1)
