"""PAR: prompt-aware retrieval + density-peak clustering + token router (docs/par.md)."""

from __future__ import annotations

import torch

from par_export.reduce.budget import adaptive_budget, cap_to_tokens, fixed_budget
from par_export.reduce.clustering import cosine_similarity_matrix, density_peaks, distinctiveness
from par_export.reduce.output import ReductionOutput
from par_export.reduce.reducer import TokenReducer
from par_export.reduce.registry import register
from par_export.reduce.retrieval import min_max, standardized_relevance
from par_export.reduce.router import mask_scores
from par_export.reduce.topk_cluster import topk_cluster


def resolve_num_kept(
    budget: int | str | torch.Tensor, z: torch.Tensor, config, token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B]`` int64 K per image: adaptive from ``z`` for ``"auto"``, else the fixed budget; at
    most each image's real token count (``token_mask [B, N]``)."""
    if isinstance(budget, str):
        return adaptive_budget(z, config.alpha, config.k_min, config.k_max, token_mask)
    return cap_to_tokens(fixed_budget(budget, z.shape[0], z.device), token_mask)


@register
class PARReducer(TokenReducer):
    """PAR steps 3-6 (docs/par.md) on ``[B, N, D]`` tokens.

    The optional ``query_projection`` maps visual tokens into the prompt's space
    (CLIP: post-LayerNorm + visual projection; LLM: the multimodal projector).
    """

    # Steps 5-6 as one call; export swaps in the par::TopKCluster custom op (--plugin).
    topk_cluster = staticmethod(topk_cluster)
    accepts_cluster_tokens = True

    name = "par"
    description = "PAR: prompt relevance + density-peak clusters + token router (merge)"
    supports_auto = True
    uses_prompt = True

    def reduce(self, visual_tokens, prompt_embedding, prompt_mask, attn, budget, width, token_mask,
               cluster_tokens=None):
        cfg = self.config
        query_tokens = None if prompt_embedding is None else self.query_projection(visual_tokens)
        z = standardized_relevance(query_tokens, prompt_embedding, prompt_mask, attn, cfg.eps, token_mask)  # [B, N]
        num_kept = resolve_num_kept(budget, z, cfg, token_mask)

        # [B, N, N]; from cluster_tokens where given (the tower's tokens of rows merged after the projector)
        similarity = cosine_similarity_matrix(visual_tokens if cluster_tokens is None else cluster_tokens, cfg.eps)
        density, separation = density_peaks(similarity, cfg.k_nn, token_mask)
        scores = cfg.beta * min_max(z, cfg.eps, token_mask) + (1.0 - cfg.beta) * distinctiveness(
            density, separation, cfg.eps, token_mask
        )
        # A (near-)duplicate of a denser token ranks below every other token (scores
        # are in [0, 1]): it becomes a center only when K leaves no other choice.
        scores = mask_scores(scores - 2.0 * (separation <= cfg.duplicate_distance).float(), token_mask)
        # Padded tokens get relevance -inf: below any -gamma, so TopKCluster drops them (its
        # semantics, and the plugin's, need no mask input).
        relevance = mask_scores(z, token_mask)
        merged, keep_index, assignment, num_kept = self.topk_cluster(
            visual_tokens, scores, relevance, num_kept, width, cfg.gamma, cfg.tau, cfg.router, similarity,
            cluster_tokens,
        )
        valid = keep_index >= 0
        # topk_cluster's merge weights: softmax(z / tau) within each cluster
        return ReductionOutput(merged, keep_index, assignment, valid, num_kept, scores, relevance.float() / cfg.tau)
