"""``prumerge_mean`` / ``prumerge+_mean``: IQR outliers of CLS attention, the rest merged in (LLaVA-PruMerge)."""

from __future__ import annotations

import torch

from par_export.reduce.budget import fixed_budget
from par_export.reduce.clustering import cosine_similarity_matrix
from par_export.reduce.reducer import TokenReducer
from par_export.reduce.registry import register
from par_export.reduce.retrieval import min_max
from par_export.reduce.router import center_slots, evenly_spaced, merged_output, route_to_centers, select_centers


def quartiles(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and third quartile per row of ``[B, N]`` (linear interpolation), each ``[B, 1]``.

    Written with a static-k ``topk`` and static positions so that it exports (no ``quantile`` op).
    """
    n = int(values.shape[-1])
    ordered = torch.topk(values, n, dim=-1, largest=False, sorted=True).values

    def at(q: float) -> torch.Tensor:
        pos = q * (n - 1)
        low = int(pos)
        high = min(low + 1, n - 1)
        frac = pos - low
        return ordered[:, low : low + 1] * (1.0 - frac) + ordered[:, high : high + 1] * frac

    return at(0.25), at(0.75)


@register
class PruMergeReducer(TokenReducer):
    """Keeps tokens whose CLS attention is an IQR outlier (``> Q3 + 1.5 IQR``), at most K
    (at least 1); ``prumerge+_mean`` adds spatially uniform samples up to K.

    Every other token is merged into its most similar kept token, weighted by its
    CLS attention (a softmax-weighted mean per cluster).

    A variant of ``CLIPVisionTower.token_prune_merge_advanced`` (``_plus``) in
    ``llava/model/multimodal_encoder/clip_encoder.py`` of 42Shawn/LLaVA-PruMerge @ 097c041,
    which takes one-head attention from encoder layer 23 (the layer after the feature layer),
    updates each kept token additively from its 32 nearest tokens by key cosine, appends one
    extra token, and (``+``) samples a fixed spatial grid (docs/par.md, "Baselines").
    """

    name = "prumerge_mean"
    description = "IQR outliers of CLS attention (adaptive, <= K) + attention-weighted mean merge (PruMerge variant)"
    needs_attn = True
    supports_auto = True  # the outlier count is adaptive; "auto" caps it at k_max
    spatial_fill = False
    dynamic_tokens = False  # quartile positions are python arithmetic on N
    takes_token_mask = False  # ... of one image's N

    def reduce(self, visual_tokens, prompt_embedding, prompt_mask, attn, budget, width, token_mask):
        b, n, _ = visual_tokens.shape
        weights = attn.float()
        cap = fixed_budget(width if isinstance(budget, str) else budget, b, visual_tokens.device)
        q1, q3 = quartiles(weights)
        outlier = weights > q3 + 1.5 * (q3 - q1)
        chosen = outlier
        if self.spatial_fill:
            chosen = outlier | evenly_spaced(~outlier, (cap - outlier.sum(dim=-1)).clamp_min(0))
        num_kept = torch.minimum(chosen.sum(dim=-1), cap).clamp_min(1)

        keep_index, valid = select_centers(min_max(weights) + 2.0 * chosen.float(), num_kept, width)
        own_slots = center_slots(keep_index, valid, n)
        similarity = cosine_similarity_matrix(visual_tokens, self.config.eps)
        assignment = route_to_centers(similarity, keep_index, valid, own_slots)
        log_weights = torch.log(weights.clamp_min(torch.finfo(torch.float32).tiny))
        return merged_output(visual_tokens, assignment, log_weights, keep_index, valid, num_kept, weights)


@register
class PruMergePlusReducer(PruMergeReducer):
    name = "prumerge+_mean"
    description = "prumerge_mean + rank-spaced samples up to K (PruMerge+ variant)"
    supports_auto = False
    spatial_fill = True
