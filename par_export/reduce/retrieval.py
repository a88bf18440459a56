"""Steps 2-3 of PAR: prompt-guided relevance of each visual token (external redundancy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from par_export.errors import ParExportError
from par_export.reduce.checks import is_exporting


def pool_prompt(prompt_embedding: torch.Tensor, prompt_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the prompt's token embeddings.

    Args:
        prompt_embedding: ``[B, P, Dq]``.
        prompt_mask: ``[B, P]`` bool/int, ``True`` for real tokens; ``None`` = all real.
    Returns:
        query ``[B, Dq]`` float32, has_prompt ``[B]`` bool (``False`` where the mask is empty).
    """
    emb = prompt_embedding.float()
    if prompt_mask is None:
        mask = torch.ones(emb.shape[:2], dtype=emb.dtype, device=emb.device)
    else:
        mask = prompt_mask.to(emb.dtype)
    count = mask.sum(dim=1)
    query = (emb * mask.unsqueeze(-1)).sum(dim=1) / count.clamp_min(1.0).unsqueeze(-1)
    return query, count > 0


def cosine_relevance(query: torch.Tensor, tokens: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``r_i = cos(q, v_i)``: query ``[B, Dq]``, tokens ``[B, N, Dq]`` -> ``[B, N]`` float32."""
    if not is_exporting() and query.shape[-1] != tokens.shape[-1]:
        raise ParExportError(f"prompt_embedding is {query.shape[-1]} wide, the visual tokens in the retrieval space are "
                         f"{tokens.shape[-1]} wide: embed the prompt in the same space (query_projection)")
    q = F.normalize(query.float(), dim=-1, eps=eps)
    v = F.normalize(tokens.float(), dim=-1, eps=eps)
    return torch.einsum("bd,bnd->bn", q, v)


def standardize(relevance: torch.Tensor, eps: float = 1e-6, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``z_i = (r_i - mean(r)) / std(r)`` per image: ``[B, N]`` -> ``[B, N]``.

    ``token_mask [B, N]`` (``True`` = real token): mean and std over the real tokens only,
    padded tokens get 0.
    """
    if token_mask is None:
        mean = relevance.mean(dim=-1, keepdim=True)
        std = relevance.std(dim=-1, keepdim=True, unbiased=False)
        return (relevance - mean) / std.clamp_min(eps)
    weight = token_mask.to(relevance.dtype)
    count = weight.sum(dim=-1, keepdim=True).clamp_min(1.0)
    mean = (relevance * weight).sum(dim=-1, keepdim=True) / count
    centered = (relevance - mean) * weight
    std = torch.sqrt((centered * centered).sum(dim=-1, keepdim=True) / count)
    return centered / std.clamp_min(eps)


def min_max(values: torch.Tensor, eps: float = 1e-6, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Rescale each row of ``[B, N]`` to ``[0, 1]`` (a constant row maps to 0); with ``token_mask``
    ``[B, N]`` the range is that of the real tokens (padded ones may fall outside ``[0, 1]``)."""
    if token_mask is None:
        low = values.amin(dim=-1, keepdim=True)
        high = values.amax(dim=-1, keepdim=True)
    else:
        low = values.masked_fill(~token_mask, float("inf")).amin(dim=-1, keepdim=True)
        high = values.masked_fill(~token_mask, float("-inf")).amax(dim=-1, keepdim=True)
    return (values - low) / (high - low).clamp_min(eps)


def standardized_relevance(
    query_tokens: torch.Tensor | None,
    prompt_embedding: torch.Tensor | None,
    prompt_mask: torch.Tensor | None,
    attn: torch.Tensor | None,
    eps: float = 1e-6,
    token_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Standardized relevance ``z`` ``[B, N]`` of each token to the prompt.

    With a prompt: cosine of the pooled prompt ``[B, Dq]`` against ``query_tokens``
    ``[B, N, Dq]`` (the visual tokens in the retrieval space). Images whose prompt
    is empty (all-zero ``prompt_mask``), or a call without a prompt, fall back to
    the CLS attention ``attn`` ``[B, N]`` (docs/par.md, step 7). ``token_mask [B, N]``: statistics over
    the real tokens only; padded tokens get ``z = 0``.
    """
    if prompt_embedding is None:
        if attn is None:
            raise ParExportError("relevance needs prompt_embedding or attn (CLS attention fallback)")
        return standardize(attn.float(), eps, token_mask)
    query, has_prompt = pool_prompt(prompt_embedding, prompt_mask)
    relevance = cosine_relevance(query, query_tokens, eps)
    if attn is not None:
        relevance = torch.where(has_prompt.unsqueeze(-1), relevance, attn.float())
    return standardize(relevance, eps, token_mask)
