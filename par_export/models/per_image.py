"""Reduce images whose token count N differs (LLaVA-NeXT, Qwen2.5-VL) one at a time."""

from __future__ import annotations

import torch

from par_export.errors import ParExportError
from par_export.reduce import ReductionOutput


def reduce_each(reducer, query_encoder, features: list[tuple[torch.Tensor, torch.Tensor]], prompts: list[str] | None,
                budget, cluster: list[torch.Tensor | None] | None = None) -> list[ReductionOutput]:
    """The reducer on each image's ``tokens [N_i, D]`` with its scores ``attn [N_i]`` (batch 1 each).

    Args:
        query_encoder: embeds the prompts (``None``: prompt-agnostic fallback).
        prompts: one per image, or ``None``.
        budget: int (every image; must be within ``[1, N_i]`` for each, the error names the image),
            one int per image, ``"auto"`` or ``None`` (the reducer's ``config.budget``).
        cluster: per image, the ``cluster_tokens [N_i, Dc]`` its similarities come from, or ``None``.
    """
    budgets = list(budget) if isinstance(budget, (list, tuple)) else [budget] * len(features)
    if len(budgets) != len(features):
        raise ParExportError(f"{len(budgets)} budgets for {len(features)} images")
    embedding = mask = None
    if reducer.uses_prompt and prompts is not None and query_encoder is not None:
        embedding, mask = query_encoder(prompts)
    outputs = []
    cluster = cluster or [None] * len(features)
    for i, ((tokens, attn), k) in enumerate(zip(features, budgets)):
        n = tokens.shape[0]
        if isinstance(k, int) and not 1 <= k <= n:
            raise ParExportError(f"image {i}: budget {k} is outside [1, {n}] (its visual tokens)")
        outputs.append(reducer(tokens[None], None if embedding is None else embedding[i:i + 1], attn[None], budget=k,
                               prompt_mask=None if mask is None else mask[i:i + 1],
                               cluster_tokens=None if cluster[i] is None else cluster[i][None]))
    return outputs
