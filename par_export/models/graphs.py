"""The ``nn.Module`` s that are traced: what each exported graph computes (a family's export config
picks them; they call the family adapter's ``vision_features``, ``projector`` and ``reducer``)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from par_export.models.query import QueryEncoder
from par_export.reduce.retrieval import pool_prompt


class VisionParGraph(nn.Module):
    """``vision_par.onnx``: vision tower -> reducer -> projector (``space=clip``), or vision tower ->
    projector -> reducer (``space=llm``, and Qwen2.5-VL whose merger is its projector).

    Inputs: ``pixel_values [B, 3, H, W]``, ``query_embeds [B, Dq]`` (all zeros = no
    prompt: CLS-attention fallback), and ``budget`` (0-d int64) when
    ``budget`` is ``"input"``. Outputs: ``image_embeds [B, W, D_llm]`` (zero past
    ``num_kept``), ``num_kept [B]`` int64, ``keep_index [B, W]`` int64 (-1 past ``num_kept``).

    Args:
        llava: the family adapter (:class:`~par_export.models.llava.ReducedLlava` or a subclass's kind:
            ``vision_features``, ``projector``, ``reducer``, ``reduces_projected``).
        budget: ``"input"`` (dynamic K), ``"auto"`` (adaptive K) or a python int
            fixed at trace time.
    """

    def __init__(self, llava, budget: str | int):
        super().__init__()
        self.llava = llava
        self.vision_tower = llava.vision_tower  # registered so .half()/.to() reach them
        self.projector = llava.projector
        self.reducer = llava.reducer
        self.budget = budget
        self.project_first = llava.reduces_projected  # the adapter's rule (ReducedLlava.to_reducer_space)
        self.return_scores = False  # reference only (reference_scores): never traced

    def forward(self, pixel_values: torch.Tensor, query_embeds: torch.Tensor, budget: torch.Tensor | None = None):
        tokens, attn = self.llava.vision_features(pixel_values)
        return self.reduce_and_project(tokens, attn, query_embeds, budget)

    def reduce_and_project(self, tokens, attn, query_embeds, budget, token_mask=None):
        """``tokens [B, N, Dv]``, ``attn [B, N]`` -> embeddings ``[B, W, D_llm]``, K ``[B]``, indices ``[B, W]``;
        ``token_mask [B, N]``: images with fewer than N tokens, padded (see ``TokenReducer``)."""
        out, embeds = self.reduction(tokens, attn, query_embeds, budget, token_mask)
        return self.graph_outputs(out, embeds)

    def reduction(self, tokens, attn, query_embeds, budget, token_mask=None):
        """The reducer's :class:`~par_export.reduce.ReductionOutput` for ``tokens [B, N, Dv]`` and the
        LLM's rows ``[B, W, D_llm]`` (zero past ``num_kept``)."""
        has_prompt = query_embeds.abs().amax(dim=-1, keepdim=True) > 0  # [B, 1]
        k = budget if self.budget == "input" else self.budget
        cluster = self.llava.cluster_tokens(tokens)  # the adapter's rule (LLaVA in LLM space: the tower's tokens)
        if self.project_first:
            tokens = self.projector(tokens)
        out = self.reducer(tokens, query_embeds.unsqueeze(1), attn, budget=k, prompt_mask=has_prompt,
                           token_mask=token_mask, cluster_tokens=cluster)
        embeds = out.tokens if self.project_first else self.projector(out.tokens)
        return out, embeds * out.valid.unsqueeze(-1).to(embeds.dtype)

    def graph_outputs(self, out, embeds, *extra):
        """``(image_embeds, *extra, num_kept, keep_index)``, plus the reducer's ``scores`` while
        :func:`reference_scores` is open."""
        outputs = (embeds, *extra, out.num_kept, out.keep_index)
        return (*outputs, out.scores) if self.return_scores else outputs


@contextlib.contextmanager
def reference_scores(module: nn.Module, output_names: list[str]):
    """While open, a :class:`VisionParGraph` ``module`` also returns the reducer's ``scores [B, N]``
    (what it ranked tokens by; ``-inf`` on padded tokens), for telling near-ties from errors when
    it serves as the reference. Yields the output names to run it with (``output_names`` plus
    ``"scores"``; unchanged for other modules)."""
    if not isinstance(module, VisionParGraph):
        yield output_names
        return
    module.return_scores = True
    try:
        yield [*output_names, "scores"]
    finally:
        module.return_scores = False


class QueryGraph(nn.Module):
    """``query_encoder.onnx``: ``input_ids, attention_mask [B, P]`` -> ``query_embeds [B, Dq]``.

    The prompt is rewritten (PAR step 1) and tokenized by the caller; CLIP space pools
    by the text tower, LLM space by the masked mean of the input embeddings.
    """

    def __init__(self, encoder: QueryEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embedding, mask = self.encoder.embed(input_ids, attention_mask)
        return pool_prompt(embedding, mask)[0].to(embedding.dtype)
