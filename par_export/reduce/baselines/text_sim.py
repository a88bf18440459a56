"""``text_sim``: top-K by prompt relevance only (PAR without clustering and routing; TRSM)."""

from __future__ import annotations

from par_export.reduce.par import resolve_num_kept
from par_export.reduce.reducer import TokenReducer
from par_export.reduce.registry import register
from par_export.reduce.retrieval import standardized_relevance
from par_export.reduce.router import keep_top_scoring


@register
class TextSimilarityReducer(TokenReducer):
    name = "text_sim"
    description = "top-K by prompt similarity only (PAR's retrieval step, TRSM)"
    supports_auto = True
    uses_prompt = True

    def reduce(self, visual_tokens, prompt_embedding, prompt_mask, attn, budget, width, token_mask):
        query_tokens = None if prompt_embedding is None else self.query_projection(visual_tokens)
        z = standardized_relevance(query_tokens, prompt_embedding, prompt_mask, attn, self.config.eps, token_mask)
        num_kept = resolve_num_kept(budget, z, self.config, token_mask)
        return keep_top_scoring(visual_tokens, z, num_kept, width, token_mask)
