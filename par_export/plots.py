"""PNG figures people would rather look at than numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from par_export.files import atomic_output
from par_export.reduce import ReductionOutput


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Lay out and write a matplotlib ``Figure`` atomically as PNG. Figures are made with
    ``matplotlib.figure.Figure`` (no pyplot): nothing selects a GUI backend or keeps a global
    figure alive, whoever imports par-export."""
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return Path(path)


def kept_token_map(reduction: ReductionOutput, index: int, side: int) -> np.ndarray:
    """``[side, side]`` map of one image: 2 = kept (center), 1 = merged into a center, 0 = dropped."""
    state = (reduction.assignment[index] >= 0).to(torch.int64)
    kept = reduction.keep_index[index][reduction.valid[index]]
    state[kept] = 2
    return state.view(side, side).cpu().numpy()


def save_kept_maps(path: str | Path, maps: list[np.ndarray], titles: list[str],
                   outlines: list[np.ndarray | None] | None = None) -> Path:
    """One panel per image: kept / merged / dropped tokens, optional outline of a region."""
    cmap = ListedColormap(["#20232a", "#5b8fd9", "#f2c14e"])
    fig = Figure(figsize=(3.2 * len(maps), 3.6))
    axes = fig.subplots(1, len(maps), squeeze=False)
    for i, (ax, grid, title) in enumerate(zip(axes[0], maps, titles)):
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        if outlines is not None and outlines[i] is not None:
            ax.contour(outlines[i].astype(float), levels=[0.5], colors="#e4572e", linewidths=1.5)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("kept (yellow) / merged (blue) / dropped (dark); red: the prompt's object", fontsize=9)
    return save_figure(fig, path)


def save_kept_overlay(path: str | Path, image: np.ndarray, keep_index: list[int], side: int, title: str) -> Path:
    """The image with its kept tokens highlighted and the others dimmed."""
    dropped = np.ones(side * side)
    dropped[keep_index] = 0.0
    shade = np.zeros((side, side, 4))
    shade[..., 3] = 0.65 * dropped.reshape(side, side)  # darken what was not kept
    fig = Figure(figsize=(4.2, 4.6))
    ax = fig.subplots()
    h, w = image.shape[:2]
    ax.imshow(image, extent=(0, w, h, 0))
    ax.imshow(shade, extent=(0, w, h, 0), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)
