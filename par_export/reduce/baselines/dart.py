"""``dart_embed``: DART's duplication-aware selection on the embedding rows, before the LLM.

DART (Wen et al., arXiv 2502.11494) keeps a few *pivot* tokens and then, for each pivot in turn,
the tokens least similar to it: duplicates of what is already kept are what it drops. The paper
picks pivots by the L1 norm of the LLM's layer-2 key states and prunes inside the LLM; that needs
the LLM and is not this reducer. This is the embedding-level form, the one TensorRT Edge-LLM's
runtime applies with ``--visualPrune`` (``DartPruner``, ``runtime/preprocess/dartPruner.h``; its
test ``referenceSelect`` calls it the ``pruned_layer=0`` mode of the DART code): pivots and
similarities on the rows the LLM would receive. It runs inside an exported graph.

Per image, with K the budget:

1. image pivots: the ``min(4, K)`` tokens with the largest L1 norm; text pivots: the 4 prompt
   tokens with the largest L1 norm (``prompt_embedding [B, P, D]`` in the tokens' own space,
   i.e. ``space=llm``; in any other space, or without a prompt, image pivots only);
2. for each pivot in that order, with ``r`` tokens still to pick and ``p`` pivots left: the
   ``ceil(r / p)`` remaining tokens least cosine-similar to it join the kept set;
3. the kept tokens (image pivots included, text pivots never) go on unmerged, in token order.

Ties go to the lower index, as in Edge-LLM. Differences from Edge-LLM's runtime: K is the
budget (Edge-LLM keeps ``ceil(N (1 - ratio))``); the text pivots come from the retrieval query
(``space=llm``: the rewritten prompt's input embeddings), not from every text position of the
chat prompt; in an exported graph the query arrives pooled (``query_embeds [B, Dq]``), so there
is one text pivot, the mean of the query's embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from par_export.reduce.budget import cap_to_tokens, fixed_budget
from par_export.reduce.checks import token_bound, token_count
from par_export.reduce.reducer import TokenReducer
from par_export.reduce.registry import register
from par_export.reduce.router import keep_top_scoring, mask_scores, top_indices

IMAGE_PIVOTS = 4
TEXT_PIVOTS = 4


def ranks(scores: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` -> each entry's rank in descending order (0 = highest; ties: lower index first)."""
    order = top_indices(scores, token_count(scores))
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


@register
class DartEmbeddingReducer(TokenReducer):
    name = "dart_embed"
    description = "DART on the embedding rows: L1 pivots + least-similar tokens per pivot (Edge-LLM's --visualPrune)"
    uses_prompt = True

    def reduce(self, visual_tokens, prompt_embedding, prompt_mask, attn, budget, width, token_mask):
        b, n, d = visual_tokens.shape
        tokens = visual_tokens.float()
        num_kept = cap_to_tokens(fixed_budget(budget, b, visual_tokens.device), token_mask)
        real = torch.ones(b, n, dtype=torch.bool, device=tokens.device) if token_mask is None else token_mask

        # image pivots: top min(4, K) by L1 norm
        l1 = mask_scores(tokens.abs().sum(dim=-1), token_mask)
        image_rank = ranks(l1)
        image_pivots = min(IMAGE_PIVOTS, token_bound(visual_tokens))  # static, also under a dynamic N
        image_count = torch.clamp(num_kept, max=image_pivots)  # [B]
        retained = (image_rank < image_count.unsqueeze(-1)) & real
        pivot_index = top_indices(l1, image_pivots)  # [B, 4], descending L1
        pivots = torch.gather(tokens, 1, pivot_index.unsqueeze(-1).expand(-1, -1, d))
        slot = torch.arange(image_pivots, device=tokens.device).unsqueeze(0)
        pivot_valid = slot < image_count.unsqueeze(-1)

        # text pivots: top 4 prompt tokens by L1 norm, where the prompt is in the tokens' space
        if prompt_embedding is not None and prompt_embedding.shape[-1] == d:
            text = prompt_embedding.float()
            has = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device) if prompt_mask is None \
                else prompt_mask.bool()
            count = min(TEXT_PIVOTS, text.shape[1])
            text_l1 = text.abs().sum(dim=-1).masked_fill(~has, float("-inf"))
            text_index = top_indices(text_l1, count)
            pivots = torch.cat([pivots, torch.gather(text, 1, text_index.unsqueeze(-1).expand(-1, -1, d))], dim=1)
            text_slot = torch.arange(count, device=text.device).unsqueeze(0)
            pivot_valid = torch.cat([pivot_valid, text_slot < has.sum(dim=-1, keepdim=True)], dim=1)

        # the pivots in order, compacted: valid image pivots, then valid text pivots (distinct keys:
        # a plain topk, which exports, orders them)
        total = pivot_valid.shape[1]
        key = torch.arange(total, device=tokens.device) + total * (~pivot_valid).to(torch.int64)
        order = torch.topk(key, total, dim=-1, largest=False, sorted=True).indices
        pivots = torch.gather(pivots, 1, order.unsqueeze(-1).expand(-1, -1, d))
        num_pivots = pivot_valid.sum(dim=-1)  # [B]
        similarity = F.normalize(pivots, dim=-1, eps=1e-8) @ F.normalize(tokens, dim=-1, eps=1e-8).transpose(1, 2)

        for offset in range(pivots.shape[1]):
            remaining = num_kept - retained.sum(dim=-1)  # [B]
            left = (num_pivots - offset).clamp_min(1)
            per_pivot = torch.where(num_pivots > offset, (remaining + left - 1) // left, torch.zeros_like(remaining))
            candidates = real & ~retained
            score = (-similarity[:, offset]).masked_fill(~candidates, float("-inf"))
            retained = retained | ((ranks(score) < per_pivot.clamp_min(0).unsqueeze(-1)) & candidates)

        kept = retained.sum(dim=-1)
        return keep_top_scoring(visual_tokens, retained.float(), kept, width, token_mask)
