"""``pool``: uniform spatial average pooling of the token grid to at most K cells."""

from __future__ import annotations

import math

import torch

from par_export.errors import ParExportError
from par_export.reduce.budget import valid_slots
from par_export.reduce.reducer import TokenReducer
from par_export.reduce.registry import register
from par_export.reduce.router import merged_output


def pool_grid(side: int, budget: int) -> tuple[int, int]:
    """``(rows, cols)`` of the largest pooling grid with ``rows * cols <= budget``.

    Among equally large grids the squarest wins: 64 -> 8x8, 128 -> 8x16, 192 -> 12x16.
    """
    best = (1, 1)
    for rows in range(1, side + 1):
        cols = min(side, budget // rows)
        if cols < 1:
            break
        size, squareness = rows * cols, -abs(rows - cols)
        if (size, squareness) > (best[0] * best[1], -abs(best[0] - best[1])):
            best = (rows, cols)
    return best


def _bin_centers(side: int, bins: int, device) -> torch.Tensor:
    """Middle row (or column) of each of ``bins`` equal bins over ``side`` rows."""
    i = torch.arange(bins, device=device)
    first = (i * side + bins - 1) // bins
    last = ((i + 1) * side + bins - 1) // bins - 1
    return (first + last) // 2


@register
class PoolReducer(TokenReducer):
    """Averages the square token grid over ``rows x cols`` equal cells.

    The kept index of a cell is its middle token. K that is not a product of two
    grid sides keeps fewer tokens (``num_kept = rows * cols``).
    """

    name = "pool"
    description = "uniform spatial average pooling to a rows x cols grid (<= K)"
    dynamic_tokens = False  # needs a square grid whose side is known at trace time
    takes_token_mask = False  # the grid is the whole token axis

    def reduce(self, visual_tokens, prompt_embedding, prompt_mask, attn, budget, width, token_mask):
        b, n, _ = visual_tokens.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ParExportError(f"method 'pool' needs a square token grid, got N={n}")
        if not isinstance(budget, int):
            raise ParExportError("method 'pool' needs a python int budget: the grid is fixed at trace time")
        rows, cols = pool_grid(side, budget)
        device = visual_tokens.device
        index = torch.arange(n, device=device)
        cell = (index // side * rows // side) * cols + (index % side * cols // side)  # [N]
        centers = (_bin_centers(side, rows, device).unsqueeze(1) * side + _bin_centers(side, cols, device)).flatten()

        num_kept = torch.full((b,), rows * cols, dtype=torch.int64, device=device)
        valid = valid_slots(num_kept, width)
        padding = torch.full((width - rows * cols,), -1, dtype=torch.int64, device=device)
        keep_index = torch.cat([centers, padding]).unsqueeze(0).expand(b, width)
        assignment = cell.unsqueeze(0).expand(b, n)
        uniform = torch.zeros(b, n, device=device)
        return merged_output(visual_tokens, assignment, uniform, keep_index, valid, num_kept, uniform)
