"""``visionzip_mean``: dominant tokens by CLS attention + contextual tokens merged (VisionZip)."""

from __future__ import annotations

import torch

from par_export.reduce.budget import cap_to_tokens, fixed_budget
from par_export.reduce.checks import token_count
from par_export.reduce.clustering import cosine_similarity_matrix
from par_export.reduce.reducer import TokenReducer
from par_export.reduce.registry import register
from par_export.reduce.router import (
    center_slots,
    drop_padded,
    evenly_spaced,
    mask_scores,
    merged_output,
    route_to_centers,
    select_centers,
    top_indices,
)


def dominant_count(num_kept: torch.Tensor, dominant: int = 54, total: int = 64) -> torch.Tensor:
    """VisionZip's split of K: 54 dominant of 64 (108/128, 162/192), rounded."""
    return (num_kept * dominant * 2 + total) // (total * 2)


@register
class VisionZipReducer(TokenReducer):
    """A variant of VisionZip: keeps the top dominant tokens by CLS attention; the remaining
    tokens are averaged into contextual tokens: targets evenly spaced over their ranks, each
    remaining token merged into its most similar target, each contextual token the mean of
    its cluster.

    Follows, and differs from, ``CLIPVisionTower_VisionZip.forward`` in
    ``visionzip/clip_encoder.py`` of dvlab-research/VisionZip @ 3151f6d: that code keeps the
    CLS token among the dominant ones, picks every ``floor(M / c)``-th remaining token as a
    target, assigns by the layer's head-mean attention keys and adds the target to the mean
    of the others (docs/par.md, "Baselines").
    """

    name = "visionzip_mean"
    description = "dominant tokens by CLS attention + merged contextual tokens (VisionZip variant: mean merge)"
    needs_attn = True

    def reduce(self, visual_tokens, prompt_embedding, prompt_mask, attn, budget, width, token_mask):
        b, n, _ = visual_tokens.shape
        num_kept = cap_to_tokens(fixed_budget(budget, b, visual_tokens.device), token_mask)
        num_dominant = dominant_count(num_kept)
        # static K unless the token axis is dynamic; padded tokens rank last
        order = top_indices(mask_scores(attn.float(), token_mask), token_count(attn))
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
        dominant = rank < num_dominant.unsqueeze(-1)
        remaining = ~dominant if token_mask is None else ~dominant & token_mask
        target = evenly_spaced(remaining, num_kept - num_dominant)

        keep_index, valid = select_centers((dominant | target).float(), num_kept, width)
        own_slots = center_slots(keep_index, valid, n)
        is_target = torch.gather(target, 1, keep_index.clamp_min(0)) & valid
        similarity = cosine_similarity_matrix(visual_tokens, self.config.eps)
        routed = route_to_centers(similarity, keep_index, is_target, own_slots)
        has_targets = is_target.any(dim=-1, keepdim=True)
        assignment = torch.where((own_slots >= 0) | has_targets, routed, torch.full_like(routed, -1))
        assignment = drop_padded(assignment, token_mask)
        uniform = torch.zeros(b, n, device=visual_tokens.device)
        return merged_output(visual_tokens, assignment, uniform, keep_index, valid, num_kept, attn)
