"""The result every reducer returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ReductionOutput:
    """Reduced visual tokens, padded to a fixed width ``W`` per batch.

    Attributes:
        tokens: ``[B, W, D]`` kept (merged) tokens, in ascending index order; rows
            past ``num_kept`` are zeros.
        keep_index: ``[B, W]`` int64 index in ``[0, N)`` of each kept token (its
            cluster center), ascending; ``-1`` past ``num_kept``.
        assignment: ``[B, N]`` int64 slot in ``[0, W)`` that each input token was
            merged into, ``-1`` if it was dropped.
        valid: ``[B, W]`` bool, ``True`` for the first ``num_kept`` slots.
        num_kept: ``[B]`` int64 number of kept tokens per image (K, adaptive or fixed).
        scores: ``[B, N]`` float32 score the kept tokens were ranked by.
    """

    tokens: torch.Tensor
    keep_index: torch.Tensor
    assignment: torch.Tensor
    valid: torch.Tensor
    num_kept: torch.Tensor
    scores: torch.Tensor
