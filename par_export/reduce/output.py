"""The result every reducer returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from par_export.reduce.merge import merge_tokens


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
        log_weights: ``[B, N]`` float32 merge weights in log space: each slot is the
            ``softmax(log_weights)`` mean of the tokens assigned to it
            (:func:`~par_export.reduce.merge.merge_tokens`); ``None`` where the reduction is
            not such a mean (the authors' forms: additive merges, a CLS row).
    """

    tokens: torch.Tensor
    keep_index: torch.Tensor
    assignment: torch.Tensor
    valid: torch.Tensor
    num_kept: torch.Tensor
    scores: torch.Tensor
    log_weights: torch.Tensor | None = None

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """The same reduction of another tensor of the same tokens, ``values [B, N, D']`` ->
        ``[B, W, D']``: the same kept set, slots and merge weights (``apply(tokens)`` is
        ``tokens``). Used for what must follow the kept tokens: Qwen3-VL's DeepStack levels,
        the projected rows of tokens clustered before the projector."""
        if self.log_weights is None:
            raise ValueError("this reduction is not a weighted mean of its tokens (an authors' form): it cannot be "
                             "applied to another tensor")
        if values.shape[:2] != self.assignment.shape:
            raise ValueError(f"values {tuple(values.shape)}: expected [B, N, D'] with [B, N] = "
                             f"{list(self.assignment.shape)}")
        return merge_tokens(values, self.assignment, self.log_weights, self.keep_index.shape[-1]).to(values.dtype)
