"""The weighted mean every merging reducer ends with; :meth:`ReductionOutput.apply` repeats it
on another tensor of the same tokens."""

from __future__ import annotations

import torch


def merge_tokens(tokens: torch.Tensor, assignment: torch.Tensor, log_weights: torch.Tensor, width: int) -> torch.Tensor:
    """Weighted mean of the tokens assigned to each slot.

    Each slot ``c`` gets ``sum_i w_i x_i / sum_i w_i`` over ``i`` with
    ``assignment_i == c`` and ``w_i = exp(log_weights_i)``, i.e. a softmax of
    ``log_weights`` within the cluster (computed relative to the cluster's maximum,
    so any temperature is safe). Slots nobody is assigned to are zeros.

    Args:
        tokens: ``[B, N, D]``.
        assignment: ``[B, N]`` int64, slot or ``-1`` (dropped).
        log_weights: ``[B, N]``.
    Returns:
        ``[B, width, D]`` float32.
    """
    slots = torch.arange(width, device=tokens.device)
    member = assignment.unsqueeze(-1) == slots.view(1, 1, -1)  # [B, N, W]
    logits = log_weights.float().unsqueeze(-1).masked_fill(~member, float("-inf"))
    # An empty slot's max is -inf; clamping it (instead of an isfinite test, which
    # older TensorRT parsers lack) keeps its weights at exp(-inf) = 0 and no NaN.
    cluster_max = logits.amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).min)  # [B, 1, W]
    weights = torch.exp(logits - cluster_max)  # zero outside the cluster
    tiny = torch.finfo(torch.float32).tiny
    share = weights / weights.sum(dim=1, keepdim=True).clamp_min(tiny)  # [B, N, W]: each slot's sums to 1 (or 0)
    # A convex combination of the members, of tokens scaled to |x| <= 1 first: finite tokens near
    # the float32 maximum cannot overflow in the sum (the clamp absorbs rounding above 1).
    scale = tokens.float().abs().amax(dim=(1, 2), keepdim=True).clamp_min(tiny)  # [B, 1, 1]
    return (share.transpose(1, 2) @ (tokens.float() / scale)).clamp(-1.0, 1.0) * scale
