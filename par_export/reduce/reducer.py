"""What every reducer shares: input checks, budget resolution, the call signature."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from par_export.errors import ParExportError
from par_export.reduce.checks import (
    check_budget_value,
    check_cluster_tokens,
    check_reducer_inputs,
    check_token_mask,
    is_exporting,
    token_bound,
)
from par_export.reduce.config import PARConfig
from par_export.reduce.output import ReductionOutput


class TokenReducer(nn.Module):
    """Base of PAR and the baselines.

    Call: ``reducer(visual_tokens [B, N, D], prompt_embedding [B, P, Dq] | None,
    attn [B, N] | None, budget=None, prompt_mask [B, P] | None,
    token_mask [B, N] | None) -> ReductionOutput``.

    ``cluster_tokens [B, N, Dc]`` (reducers with ``accepts_cluster_tokens``): another tensor of the
    same tokens that the similarities (density, routing) come from, while the merged rows are
    ``visual_tokens``'s: LLaVA in LLM space clusters on the tower's 1024-wide tokens and merges the
    projector's 4096-wide rows, a quarter of the N x N similarity cost.

    ``token_mask`` (bool, ``True`` = real token) lets one call reduce images with different
    token counts, padded to a common N: each image is reduced as if it were alone (same K,
    kept indices and rows), its K capped at its real token count; padded tokens are never
    kept and merge into nothing. ``None`` = every token is real.

    ``budget`` is a python int K (output width K), ``"auto"`` (adaptive K, output
    width ``min(k_max, N)``) or a 0-d int tensor (dynamic K, as in an exported
    graph; output width ``min(k_max, N)``); ``None`` takes ``config.budget``.

    Subclasses set the class attributes and implement :meth:`reduce`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    supports_auto: ClassVar[bool] = False
    needs_attn: ClassVar[bool] = False  # CLS attention is required
    uses_prompt: ClassVar[bool] = False  # relevance from the prompt, CLS attention as fallback
    # Exports with a dynamic token axis (checks.dynamic_token_axis): no size of the traced
    # example is baked into the graph. Families whose N differs per image need it.
    dynamic_tokens: ClassVar[bool] = True
    # Reduces a padded batch of images with different N (token_mask); False: one image per call.
    takes_token_mask: ClassVar[bool] = True
    # Tower outputs beyond the patch tokens and CLS attention that the method reads, passed as
    # ``tower={name: tensor}`` (the authors' forms in reduce/authors/: "cls_token" [B, D], "keys"
    # [B, 1 + N, Dk]). Such a method runs where the model adapter supplies them, not in an export.
    tower_inputs: ClassVar[tuple[str, ...]] = ()
    # Takes ``cluster_tokens``: similarities from another tensor of the same tokens (see the class doc).
    accepts_cluster_tokens: ClassVar[bool] = False

    def __init__(self, config: PARConfig | None = None, query_projection: nn.Module | None = None):
        super().__init__()
        self.config = config if config is not None else PARConfig()
        # Maps visual tokens [B, N, D] into the prompt's space [B, N, Dq]; identity if None.
        self.query_projection = query_projection if query_projection is not None else nn.Identity()

    def forward(
        self,
        visual_tokens: torch.Tensor,
        prompt_embedding: torch.Tensor | None = None,
        attn: torch.Tensor | None = None,
        budget: int | str | torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        tower: dict[str, torch.Tensor] | None = None,
        cluster_tokens: torch.Tensor | None = None,
    ) -> ReductionOutput:
        budget = self.config.budget if budget is None else budget
        if not is_exporting():  # checked before anything reads them
            check_reducer_inputs(visual_tokens, prompt_embedding, prompt_mask, attn)
            if cluster_tokens is not None:
                check_cluster_tokens(cluster_tokens, visual_tokens, self.accepts_cluster_tokens, self.name)
        num_tokens = token_bound(visual_tokens)  # static in an exported graph: fixes TopK's K
        width = budget if isinstance(budget, int) else min(self.config.k_max, num_tokens)
        if not is_exporting():
            check_budget_value(budget, num_tokens, width, self.supports_auto, self.name)
            self._check_sources(prompt_embedding, prompt_mask, attn)
            if token_mask is not None:
                if not self.takes_token_mask:
                    raise ParExportError(f"method {self.name!r} reduces one image per call: it takes no token_mask")
                token_mask = check_token_mask(token_mask, visual_tokens, budget)
        extra = {}  # keyword inputs only the reducers that declare them take
        if self.tower_inputs:
            missing = [name for name in self.tower_inputs if name not in (tower or {})]
            if missing:
                raise ParExportError(f"method {self.name!r} also reads the vision tower's {', '.join(missing)} "
                                 "(tower={...}); the LLaVA adapter supplies them")
            extra["tower"] = tower
        if cluster_tokens is not None:
            extra["cluster_tokens"] = cluster_tokens
        return self.reduce(visual_tokens, prompt_embedding, prompt_mask, attn, budget, width, token_mask, **extra)

    def reduce(
        self,
        visual_tokens: torch.Tensor,
        prompt_embedding: torch.Tensor | None,
        prompt_mask: torch.Tensor | None,
        attn: torch.Tensor | None,
        budget: int | str | torch.Tensor,
        width: int,
        token_mask: torch.Tensor | None,
    ) -> ReductionOutput:
        raise NotImplementedError

    def _check_sources(self, prompt_embedding, prompt_mask, attn) -> None:
        if self.needs_attn and attn is None:
            raise ParExportError(f"method {self.name!r} ranks tokens by CLS attention: pass attn [B, N]")
        if not self.uses_prompt or attn is not None:
            return
        if prompt_embedding is None:
            raise ParExportError(
                f"method {self.name!r} needs prompt_embedding, or attn [B, N] for the prompt-agnostic fallback"
            )
        if prompt_mask is not None and not bool(prompt_mask.bool().any(dim=1).all()):
            raise ParExportError(
                f"method {self.name!r}: some images have an empty prompt; pass attn [B, N] for their fallback"
            )
