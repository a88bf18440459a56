"""Step 6 of PAR: pick cluster centers, route every token to one, merge.

Shared by PAR and the baselines: each reducer differs only in how it scores
tokens, which tokens it routes and with what weights.
"""

from __future__ import annotations

import torch

from par_export.reduce.budget import cap_to_tokens
from par_export.reduce.checks import is_exporting
from par_export.reduce.merge import merge_tokens
from par_export.reduce.output import ReductionOutput


def top_indices(scores: torch.Tensor, width: int) -> torch.Tensor:
    """Indices of the ``width`` highest scores per row, ties broken by lower index.

    ``[B, N]`` -> ``[B, width]`` int64 in descending score order. Eager torch needs a
    stable sort for that (``torch.topk`` leaves the order of equal values open);
    under export ``topk`` becomes ONNX ``TopK`` with a static k, whose spec breaks
    ties by lower index, and which the ONNX exporter can emit (a stable sort it cannot).
    """
    if is_exporting():
        return torch.topk(scores, width, dim=-1, largest=True, sorted=True).indices
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :width]


def mask_scores(scores: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """``scores [B, N]`` with padded tokens (``token_mask`` False) at ``-inf`` (integer scores: their
    dtype's minimum): ranked after every real token, so they are never kept while K is at most the
    image's real token count."""
    if token_mask is None:
        return scores
    lowest = float("-inf") if scores.is_floating_point() else torch.iinfo(scores.dtype).min
    return scores.masked_fill(~token_mask, lowest)


def drop_padded(assignment: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """``assignment [B, N]`` with padded tokens dropped (``-1``): they merge into nothing."""
    if token_mask is None:
        return assignment
    return torch.where(token_mask, assignment, torch.full_like(assignment, -1))


def select_centers(scores: torch.Tensor, num_kept: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``num_kept`` tokens by ``scores``, as ascending indices padded to ``width``.

    Args:
        scores: ``[B, N]``.
        num_kept: ``[B]`` int64, ``<= width <= N``.
    Returns:
        keep_index ``[B, width]`` int64 (ascending, ``-1`` in padded slots) and
        valid ``[B, width]`` bool.
    """
    ranked = top_indices(scores, width)
    valid = torch.arange(width, device=scores.device).unsqueeze(0) < num_kept.unsqueeze(-1)
    # Padded slots get a sentinel above every index so that an ascending sort moves them
    # last; topk with a python-int k rather than sort, which exports with K read from the shape.
    padded = torch.where(valid, ranked, torch.full_like(ranked, 1 << 30))
    ascending = torch.topk(padded, width, dim=-1, largest=False, sorted=True).values
    keep_index = torch.where(valid, ascending, torch.full_like(ascending, -1))
    return keep_index, valid


def center_slots(keep_index: torch.Tensor, valid: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``[B, N]`` int64: the slot of each token that is a center, ``-1`` for the others."""
    tokens = torch.arange(num_tokens, device=keep_index.device)
    is_slot = (tokens.view(1, -1, 1) == keep_index.unsqueeze(1)) & valid.unsqueeze(1)  # [B, N, W]
    slot = is_slot.to(torch.int64).argmax(dim=-1)
    return torch.where(is_slot.any(dim=-1), slot, torch.full_like(slot, -1))


def route_to_centers(
    similarity: torch.Tensor, keep_index: torch.Tensor, valid: torch.Tensor, own_slots: torch.Tensor
) -> torch.Tensor:
    """Slot of the most similar valid center for every token; centers route to themselves.

    Args:
        similarity: ``[B, N, N]``.
        keep_index, valid: ``[B, W]`` from :func:`select_centers`.
        own_slots: ``[B, N]`` from :func:`center_slots`.
    Returns:
        ``[B, N]`` int64 in ``[0, W)``; equal similarities go to the lower slot.
    """
    b, n, _ = similarity.shape
    width = keep_index.shape[-1]
    gather_index = keep_index.clamp_min(0).unsqueeze(1).expand(b, n, width)
    to_centers = torch.gather(similarity, 2, gather_index).masked_fill(~valid.unsqueeze(1), float("-inf"))
    nearest = to_centers.argmax(dim=-1)
    return torch.where(own_slots >= 0, own_slots, nearest)


def merged_output(
    visual_tokens: torch.Tensor,
    assignment: torch.Tensor,
    log_weights: torch.Tensor,
    keep_index: torch.Tensor,
    valid: torch.Tensor,
    num_kept: torch.Tensor,
    scores: torch.Tensor,
) -> ReductionOutput:
    """The :class:`ReductionOutput` of merging by ``assignment`` (see :func:`merge_tokens`)."""
    merged = merge_tokens(visual_tokens, assignment, log_weights, keep_index.shape[-1])
    return ReductionOutput(
        tokens=merged.to(visual_tokens.dtype),
        keep_index=keep_index,
        assignment=assignment,
        valid=valid,
        num_kept=num_kept,
        scores=scores.float(),
        log_weights=log_weights.float(),
    )


def keep_top_scoring(
    visual_tokens: torch.Tensor,
    scores: torch.Tensor,
    num_kept: torch.Tensor,
    width: int,
    token_mask: torch.Tensor | None = None,
) -> ReductionOutput:
    """Keep the top-``num_kept`` tokens by ``scores`` unchanged and drop the rest; padded tokens
    (``token_mask [B, N]`` False) are never kept, K is capped at each image's real tokens.

    Pruning-only reducers (random, CLS attention, text similarity) are this call.
    """
    scores = mask_scores(scores, token_mask)
    num_kept = cap_to_tokens(num_kept, token_mask)
    keep_index, valid = select_centers(scores, num_kept, width)
    assignment = center_slots(keep_index, valid, visual_tokens.shape[1])
    gathered = torch.gather(
        visual_tokens, 1, keep_index.clamp_min(0).unsqueeze(-1).expand(-1, -1, visual_tokens.shape[-1])
    )
    tokens = gathered * valid.unsqueeze(-1).to(gathered.dtype)
    return ReductionOutput(
        tokens=tokens, keep_index=keep_index, assignment=assignment, valid=valid, num_kept=num_kept, scores=scores.float(),
        log_weights=torch.zeros_like(scores, dtype=torch.float32),  # one token per slot
    )


def evenly_spaced(candidates: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Pick ``count`` tokens spread evenly, in index order, over the ``candidates``.

    Args:
        candidates: ``[B, N]`` bool.
        count: ``[B]`` int64; all candidates are picked when it exceeds their number.
    Returns:
        ``[B, N]`` bool, the first candidate always among the picked when ``count > 0``.
    """
    rank = candidates.to(torch.int64).cumsum(dim=-1) - 1  # rank among the candidates
    total = candidates.sum(dim=-1, keepdim=True).clamp_min(1)
    c = count.unsqueeze(-1)
    starts_new_step = (rank * c) // total != ((rank - 1) * c) // total
    return candidates & ((rank == 0) | starts_new_step) & (c > 0)
