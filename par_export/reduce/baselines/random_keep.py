"""``random``: keep a pseudo-random subset of K tokens (the same subset for every image)."""

from __future__ import annotations

import torch

from par_export.reduce.budget import fixed_budget
from par_export.reduce.reducer import TokenReducer
from par_export.reduce.registry import register
from par_export.reduce.router import keep_top_scoring

_KNUTH = 2654435761  # odd, so i -> i * _KNUTH mod 2^32 is a bijection


@register
class RandomReducer(TokenReducer):
    """Ranks tokens by an integer hash of their index and ``seed``.

    A hash instead of ``torch.rand`` keeps the choice deterministic, identical for
    a batch and its samples, and expressible in an exported graph.
    """

    name = "random"
    description = "random subset of K tokens (seeded hash of the index)"

    def __init__(self, config=None, query_projection=None, seed: int = 0):
        super().__init__(config, query_projection)
        self.seed = int(seed)

    def reduce(self, visual_tokens, prompt_embedding, prompt_mask, attn, budget, width, token_mask):
        b, n, _ = visual_tokens.shape
        index = torch.arange(n, device=visual_tokens.device, dtype=torch.int64)
        scores = ((index + 1 + self.seed * 7919) * _KNUTH) % (1 << 32)
        num_kept = fixed_budget(budget, b, visual_tokens.device)
        return keep_top_scoring(visual_tokens, scores.unsqueeze(0).expand(b, n), num_kept, width, token_mask)
