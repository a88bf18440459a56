"""``prumerge`` / ``prumerge+``: LLaVA-PruMerge as its authors' code computes it.

Follows ``CLIPVisionTower.token_prune_merge_advanced`` and ``token_prune_merge_advanced_plus``
(``if_adaptive=True``, what its ``forward`` calls) in ``llava/model/multimodal_encoder/clip_encoder.py``
of 42Shawn/LLaVA-PruMerge @ 097c041:

1. attention: ``softmax(q k^T / sqrt(D))`` with the q/k projections of the encoder layer
   *after* the feature layer (layer 23 of CLIP-L, hooked on ``q_proj``/``k_proj``) as one head
   over the full width D, on the feature layer's tokens; the CLS row over the patches;
2. kept: ``int(N x ratio)`` patches with the most attention, where ``ratio`` is the share of IQR
   outliers (``> Q3 + 1.5 IQR``, numpy percentiles) among the attentions of the *whole batch*;
   in descending attention order. ``prumerge+`` adds every ``int(int(1 / ratio) / 3)``-th index
   of ``range(0, 575)`` not kept yet (its code: one image per call, 576 patches);
3. each kept token becomes ``x_i + sum_j a_j x_j`` over its 32 nearest other patches by key
   cosine (the neighbourhoods overlap; the weights are not normalized), and one extra row
   ``sum_j a_j x_j`` over the patches not kept is appended.

Batches: each image gets its own ratio by default, as the authors evaluate (one image per call);
``batch_ratio=True`` computes one ratio over the batch, as their code does when called with one
(``prumerge+``'s code takes one image). An int budget K takes the code's fixed-ratio path with ``K - 1`` patches kept (plus the extra
row); ``prumerge+`` has no such path here. ``keep_index`` follows the rows' order; the extra
row, made of many patches, has index N + 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from par_export.errors import ParExportError
from par_export.reduce.output import ReductionOutput
from par_export.reduce.reducer import TokenReducer
from par_export.reduce.registry import register_authors

NEIGHBOURS = 32
GRID_END = 575  # prumerge+'s range end in its code: 576 patches


def stack_outputs(outputs: list[ReductionOutput]) -> ReductionOutput:
    """Per-image outputs (batch 1 each, K may differ) -> one batch padded to the largest K."""
    width = max(int(o.num_kept[0]) for o in outputs)

    def pad(tensor, value):
        return F.pad(tensor, (0, 0, 0, width - tensor.shape[1]) if tensor.dim() == 3 else (0, width - tensor.shape[1]),
                     value=value)

    return ReductionOutput(
        tokens=torch.cat([pad(o.tokens, 0.0) for o in outputs]),
        keep_index=torch.cat([pad(o.keep_index, -1) for o in outputs]),
        assignment=torch.cat([o.assignment for o in outputs]),
        valid=torch.cat([pad(o.valid, False) for o in outputs]),
        num_kept=torch.cat([o.num_kept for o in outputs]), scores=torch.cat([o.scores for o in outputs]))


def outlier_ratio(attention: torch.Tensor) -> float:
    """Share of IQR outliers over every value of ``[B, N]`` (one ratio for the batch, as the code)."""
    values = attention.float().cpu().numpy().ravel()
    q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
    return float((values > q3 + 1.5 * (q3 - q1)).sum() / len(values))


@register_authors
class PruMergeReducer(TokenReducer):
    name = "prumerge"
    description = "LLaVA-PruMerge as its authors' code: IQR outliers of next-layer attention, 32-NN additive merge"
    supports_auto = True
    dynamic_tokens = False
    takes_token_mask = False
    tower_inputs = ("next_queries", "next_keys")
    spatial_grid = False

    def __init__(self, config=None, query_projection=None, batch_ratio: bool = False):
        super().__init__(config, query_projection)
        # False: each image its own outlier ratio, as the authors evaluate (one image per call);
        # True: one ratio over the batch, as their code computes it when called with a batch
        self.batch_ratio = batch_ratio and not self.spatial_grid  # prumerge+'s code takes one image

    def reduce(self, visual_tokens, prompt_embedding, prompt_mask, attn, budget, width, token_mask, tower=None):
        if self.batch_ratio or visual_tokens.shape[0] == 1:
            return self._reduce(visual_tokens, budget, tower)
        return stack_outputs([self._reduce(visual_tokens[i:i + 1], budget, {k: v[i:i + 1] for k, v in tower.items()})
                              for i in range(visual_tokens.shape[0])])

    def _reduce(self, visual_tokens, budget, tower):
        b, n, d = visual_tokens.shape
        queries, keys = tower["next_queries"], tower["next_keys"]  # [B, 1 + N, D]: CLS first
        attention = torch.softmax((queries[:, :1] @ keys.transpose(1, 2)) * d ** -0.5, dim=-1)[:, 0, 1:]  # [B, N]
        if isinstance(budget, str):
            ratio = outlier_ratio(attention)
            left = int(n * ratio)
        else:
            if self.spatial_grid:
                raise ParExportError("prumerge+ (the authors' form) is adaptive only: budget 'auto'")
            ratio, left = None, int(budget) - 1
        index = attention.topk(left, dim=1, largest=True, sorted=True).indices  # [B, left]
        if self.spatial_grid:
            index = self._with_grid(index, ratio, n)
        kept = index.shape[1]
        if n - 1 < NEIGHBOURS:  # neighbours are any other patch, kept or not: the code's only bound
            raise ParExportError(f"{self.name}: {n} patches leave fewer than {NEIGHBOURS} neighbours per patch")
        features = visual_tokens.float()
        gather = index.unsqueeze(-1).expand(-1, -1, d)
        unit_keys = F.normalize(keys[:, 1:].float(), p=2, dim=-1)
        similarity = torch.gather(unit_keys, 1, gather) @ unit_keys.transpose(1, 2)  # [B, kept, N]
        similarity.scatter_(2, index.unsqueeze(-1), float("-inf"))  # a token is not its own neighbour
        neighbours = similarity.topk(NEIGHBOURS, dim=-1).indices  # [B, kept, 32]
        weights = torch.gather(attention.unsqueeze(1).expand(-1, kept, -1), 2, neighbours)
        near = torch.gather(features.unsqueeze(1).expand(-1, kept, -1, -1), 2,
                            neighbours.unsqueeze(-1).expand(-1, -1, -1, d))  # [B, kept, 32, D]
        centers = torch.gather(features, 1, gather) + (near * weights.unsqueeze(-1)).sum(dim=2)
        pruned = torch.ones(b, n, dtype=torch.bool, device=features.device).scatter_(1, index, False)
        extra = (features * (attention * pruned).unsqueeze(-1)).sum(dim=1, keepdim=True)
        slots = torch.full((b, n), kept, dtype=torch.int64, device=features.device)  # pruned: the extra row
        slots.scatter_(1, index, torch.arange(kept, device=features.device).expand(b, -1))
        return ReductionOutput(
            tokens=torch.cat([centers, extra], dim=1).to(visual_tokens.dtype),
            keep_index=torch.cat([index, torch.full_like(index[:, :1], n + 1)], dim=1),
            assignment=slots, valid=torch.ones(b, kept + 1, dtype=torch.bool, device=features.device),
            num_kept=torch.full((b,), kept + 1, dtype=torch.int64, device=features.device), scores=attention)

    @staticmethod
    def _with_grid(index: torch.Tensor, ratio: float, n: int) -> torch.Tensor:
        if index.shape[0] != 1 or n != GRID_END + 1:
            raise ParExportError(f"prumerge+ (the authors' form) reduces one image of {GRID_END + 1} patches per call, "
                             f"as its code; got batch {index.shape[0]} of {n}")
        if ratio <= 0 or int(int(1 / ratio) / 3) < 1:
            raise ParExportError(f"prumerge+: an outlier ratio of {ratio:.3f} gives its code no grid step")
        grid = torch.arange(0, GRID_END, int(int(1 / ratio) / 3), device=index.device)
        extra = grid[~torch.isin(grid, index[0])]
        return torch.cat([index, extra.unsqueeze(0)], dim=1)


@register_authors
class PruMergePlusReducer(PruMergeReducer):
    name = "prumerge+"
    description = "PruMerge+ as its authors' code: prumerge + a fixed spatial grid of patches (batch 1, 576 patches)"
    spatial_grid = True
