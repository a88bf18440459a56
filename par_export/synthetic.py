"""Synthetic visual tokens with planted objects: a known answer for what a reducer should keep."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PlantedScene:
    """A batch of token grids, each with square objects and a prompt about one of them.

    Attributes:
        tokens: ``[B, N, D]`` visual tokens (``N = side * side``).
        prompt_embedding: ``[B, 1, D]`` query in the tokens' own space (a noisy copy
            of the asked-about object's direction).
        attn: ``[B, N]`` CLS-attention-like saliency: high on every object.
        target: ``[B, N]`` bool, the tokens of the asked-about object.
        side: grid side.
    """

    tokens: torch.Tensor
    prompt_embedding: torch.Tensor
    attn: torch.Tensor
    target: torch.Tensor
    side: int


def planted_scene(batch: int, side: int, dim: int, seed: int = 0, objects: int = 4, object_size: int = 4,
                  strength: float = 4.0) -> PlantedScene:
    """Random background tokens with ``objects`` squares of ``object_size``^2 similar tokens.

    Object 0 of each image is the one the prompt asks about. Squares may overlap;
    later ones overwrite earlier ones, and ``target`` marks what is left of object 0.
    """
    gen = torch.Generator().manual_seed(seed)
    n = side * side
    tokens = torch.randn(batch, n, dim, generator=gen)
    label = torch.full((batch, n), -1, dtype=torch.long)
    directions = torch.nn.functional.normalize(torch.randn(batch, objects, dim, generator=gen), dim=-1)
    grid = torch.arange(n).view(side, side)
    for b in range(batch):
        for o in range(objects):
            r, c = torch.randint(0, side - object_size + 1, (2,), generator=gen).tolist()
            cells = grid[r : r + object_size, c : c + object_size].flatten()
            noise = 0.5 * torch.randn(cells.numel(), dim, generator=gen)
            tokens[b, cells] = noise + strength * directions[b, o]
            label[b, cells] = o
    prompt = directions[:, :1] + 0.05 * torch.randn(batch, 1, dim, generator=gen)
    attn = torch.softmax(torch.where(label >= 0, 2.0, 0.0) + 0.5 * torch.randn(batch, n, generator=gen), dim=-1)
    return PlantedScene(tokens, prompt, attn, label == 0, side)
