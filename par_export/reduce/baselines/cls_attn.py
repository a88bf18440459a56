"""``cls_attn``: FasterVLM-style top-K by the CLS token's attention."""

from __future__ import annotations

from par_export.reduce.budget import fixed_budget
from par_export.reduce.reducer import TokenReducer
from par_export.reduce.registry import register
from par_export.reduce.router import keep_top_scoring


@register
class ClsAttentionReducer(TokenReducer):
    name = "cls_attn"
    description = "top-K by CLS attention, prompt-agnostic (FasterVLM)"
    needs_attn = True

    def reduce(self, visual_tokens, prompt_embedding, prompt_mask, attn, budget, width, token_mask):
        num_kept = fixed_budget(budget, visual_tokens.shape[0], visual_tokens.device)
        return keep_top_scoring(visual_tokens, attn.float(), num_kept, width, token_mask)
