"""The Qwen3-VL family (``Qwen3VLForConditionalGeneration``): Qwen2.5-VL's reduction of each
image's merged tokens, plus DeepStack.

DeepStack. The tower hands the LLM, besides its merged tokens, one more merged feature per
DeepStack level (``deepstack_visual_indexes``), which the LLM adds to the image positions of
its first decoder layers. A reduction must give those the same kept set and the same merge
weights as the main tokens, or the LLM adds features of tokens it no longer has: each level is
reduced by ``ReductionOutput.apply`` (the reducer's slots and weights on another tensor of the
same tokens). The rows of image i are ``[1 + L, K_i, D]``: the main rows, then each level's.

Positions. Qwen3-VL's M-RoPE is interleaved inside the rotary embedding; the (t, h, w)
positions themselves follow the same rule as Qwen2.5-VL's (``get_vision_position_ids`` and
text from the full grid's extent), so kept tokens keep their stock positions exactly as in
:mod:`par_export.models.qwen2_5_vl`.

Prompt-agnostic scores come from the last block (every Qwen3-VL tower block attends over the
whole image; there are no windows).

Not yet: the ONNX export (the family refuses ``export``/``build`` in one line), Edge-LLM's
Qwen3-VL visual layout, and the ONNX Runtime LLM (its decoder would need the DeepStack inputs).
"""

from __future__ import annotations

import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from par_export.errors import ParExportError
from par_export.models.family import ModelFamily
from par_export.models.per_image import reduce_each
from par_export.models.qwen2_5_vl import FALLBACK_TEMPLATE, ReducedQwen2_5_VL


class ReducedQwen3VL(ReducedQwen2_5_VL):
    """A ``Qwen3VLForConditionalGeneration`` whose merged image tokens, and each DeepStack level
    with them, go through a reducer (arguments as :class:`ReducedQwen2_5_VL`)."""

    model_class = "Qwen3VLForConditionalGeneration"
    model_types = ("qwen3_vl",)

    def score_block(self):
        return self.visual.blocks[-1]

    def to_raster(self, per_merged: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        return per_merged  # the tower keeps the processor's order (no windows)

    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor):
        """Per image: merged tokens ``[N_i, D]``, the attention they receive ``[N_i]`` and the
        DeepStack levels ``[L, N_i, D]``."""
        features, out = self._tower(pixel_values, image_grid_thw)
        sizes = self.tokens_per_image(image_grid_thw)
        levels = torch.stack(list(out.deepstack_features))  # [L, sum N, D]
        return [(tokens, received, stack) for (tokens, received), stack
                in zip(features, torch.split(levels, sizes, dim=1))]

    @torch.no_grad()
    def reduce_images(self, pixel_values, prompts: list[str] | None, budget=None, features=None,
                      image_grid_thw: torch.Tensor | None = None):
        """Each image reduced for its prompt: ``ReductionOutput`` (batch 1) and its rows ``[1 + L, K_i, D]``
        (main rows, then each DeepStack level reduced with the same slots and weights)."""
        features = features if features is not None else self.vision_features(pixel_values, image_grid_thw)
        outputs = reduce_each(self.reducer, self.query_encoder, [(t, r) for t, r, _ in features], prompts, budget)
        rows = []
        for out, (_, _, levels) in zip(outputs, features):
            k = int(out.num_kept[0])
            deepstack = torch.cat([out.apply(level[None]) for level in levels])  # [L, W, D]
            rows.append(torch.cat([out.tokens[:, :k], deepstack[:, :k]]))
        return outputs, rows

    def image_outputs(self, rows: list[torch.Tensor]):
        """Main rows and, per DeepStack level, each image's rows (what the stock forward reads)."""
        if any(r.dim() != 3 for r in rows):
            raise ParExportError("Qwen3-VL rows are [1 + DeepStack levels, K, D] per image (main rows, then each "
                                 "level's, reduced alike)")
        levels = rows[0].shape[0] - 1
        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=[r[0] for r in rows],
            deepstack_features=[[r[1 + level] for r in rows] for level in range(levels)])

    @torch.no_grad()
    def full_inputs(self, input_ids, attention_mask, pixel_values, image_grid_thw) -> dict:
        features = self.vision_features(pixel_values, image_grid_thw)
        rows = [torch.cat([tokens[None], levels]) for tokens, _, levels in features]
        keep = [torch.arange(n) for n in self.tokens_per_image(image_grid_thw)]
        return self.inputs_from_rows(input_ids, attention_mask, image_grid_thw, rows, keep)

    def prompt_embeds(self, model_inputs: dict):
        raise ParExportError("Qwen3-VL's LLM adds DeepStack rows inside its first layers: the exported ONNX LLM "
                             "(runtime/llm_onnx.py) has no input for them yet; answer with transformers")


FAMILY = ModelFamily(
    name="qwen3_vl",
    description="Qwen3-VL: Qwen3VLForConditionalGeneration, dynamic resolution, interleaved M-RoPE, DeepStack",
    adapter=ReducedQwen3VL,
    onnx_config=None,
    image_token="<|image_pad|>",
    fallback_template=FALLBACK_TEMPLATE,
)
