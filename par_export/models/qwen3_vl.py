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

Export (:class:`Qwen3VisionParGraph`): Qwen2.5-VL's graph with the tower's learned position grid
resampled by host-computed bilinear taps instead of windows, and the DeepStack levels as one more
output, ``deepstack_embeds [L, I, W, D]``, reduced with the main rows' slots and weights.

Not yet: Edge-LLM's Qwen3-VL visual layout, and the ONNX Runtime LLM (its decoder would need the
DeepStack inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from par_export.errors import ParExportError
from par_export.models.family import ModelFamily
from par_export.models.layouts import qwen3_vision_inputs
from par_export.models.onnx_config import GraphSpec
from par_export.models.per_image import reduce_each
from par_export.models.qwen2_5_vl import (
    FALLBACK_TEMPLATE,
    Qwen2_5_VLOnnxConfig,
    QwenVisionParGraph,
    ReducedQwen2_5_VL,
    masked_vision_attention,
    per_image,
    rotary_angles,
    segment_ids,
)


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


class Qwen3VisionParGraph(QwenVisionParGraph):
    """``vision_par.onnx`` for Qwen3-VL images, one or several per call (each its own size): tower
    (learned position grid, 2D rotary, full attention within each image, DeepStack mergers, merger)
    -> reducer on each image's merged tokens, its slots and weights applied to each DeepStack level.

    Inputs: ``pixel_values [S, 3 * 2 * P * P]``, ``vision_position_ids [S, 2]``, ``pos_embed_index
    [S, 4]``, ``pos_embed_weight [S, 4]``, ``cu_seqlens [I + 1]`` (host-side:
    :func:`~par_export.models.layouts.qwen3_vision_inputs`), ``query_embeds [I, D]``, ``budget``.
    Outputs: ``image_embeds [I, W, D]``, ``deepstack_embeds [L, I, W, D]``, ``num_kept [I]``,
    ``keep_index [I, W]`` (raster order of image i's merged tokens)."""

    def tower(self, pixel_values, angles, pos_embed_index, pos_embed_weight, cu_seqlens):
        """The tower on patches ``[S, C * T * P * P]`` with rotary ``angles [S, head_dim / 2]`` (h then w,
        as :func:`~par_export.models.qwen2_5_vl.rotary_angles`: Edge-LLM's ``rotary_pos_emb``) and the
        position grid's taps ``[S, 4]``: merged tokens ``[sum N, D]`` (processor order, image after
        image), the attention each receives in the last block ``[sum N]`` and the DeepStack levels
        ``[L, sum N, D]``."""
        visual = self.vision_tower
        hidden = visual.patch_embed(pixel_values)
        hidden = hidden + (visual.pos_embed(pos_embed_index) * pos_embed_weight.unsqueeze(-1)).sum(1).to(hidden.dtype)
        both = torch.cat((angles, angles), dim=-1)  # the tower's own recomposition (axial rope)
        cos, sin = both.cos(), both.sin()
        image_ids = segment_ids(pixel_values.shape[0], cu_seqlens)
        image_mask = image_ids.unsqueeze(0) == image_ids.unsqueeze(1)  # every block attends within an image
        levels = []
        for number, block in enumerate(visual.blocks):
            out, received = masked_vision_attention(block.attn, block.norm1(hidden), cos, sin, image_mask)
            hidden = hidden + out
            hidden = hidden + block.mlp(block.norm2(hidden))
            if number in visual.deepstack_visual_indexes:
                merger = visual.deepstack_merger_list[visual.deepstack_visual_indexes.index(number)]
                levels.append(merger(hidden))
        received = received.reshape(-1, visual.spatial_merge_unit).sum(-1)  # the last block's
        return visual.merger(hidden), received, torch.stack(levels)

    def reduce_images(self, tokens, received, levels, cu_seqlens, query_embeds, budget):
        """Each image's merged tokens (``cu_seqlens`` bounds its patches) reduced for its query, each
        DeepStack level with the same slots and weights: the reduction, the main rows ``[I, W, D]``
        and the levels' rows ``[L, I, W, D]`` (zero past K)."""
        token_bounds = cu_seqlens // self.vision_tower.spatial_merge_unit
        padded, attn, mask = per_image(tokens, received, token_bounds)
        out, embeds = self.reduction(padded, attn, query_embeds, budget, mask)
        valid = out.valid.unsqueeze(-1).to(embeds.dtype)
        deepstack = torch.stack([out.apply(per_image(level, received, token_bounds)[0]) * valid for level in levels])
        return out, embeds, deepstack

    def forward(self, pixel_values, vision_position_ids, pos_embed_index, pos_embed_weight, cu_seqlens, query_embeds,
                budget=None):
        angles = rotary_angles(vision_position_ids, self.vision_tower.rotary_pos_emb.inv_freq)
        tokens, received, levels = self.tower(pixel_values, angles, pos_embed_index, pos_embed_weight, cu_seqlens)
        out, embeds, deepstack = self.reduce_images(tokens, received, levels, cu_seqlens, query_embeds, budget)
        return self.graph_outputs(out, embeds, deepstack)


@dataclass(frozen=True)
class Qwen3VLOnnxConfig(Qwen2_5_VLOnnxConfig):
    """Qwen3-VL's export: Qwen2.5-VL's (several images per call, N dynamic) with the learned position
    grid's taps as inputs and the DeepStack levels as an output."""

    @property
    def vision_par(self) -> GraphSpec:
        inputs = ("pixel_values", "vision_position_ids", "pos_embed_index", "pos_embed_weight", "cu_seqlens",
                  "query_embeds")
        inputs += ("budget",) if self.budget_input else ()
        images = {0: "images"}
        patches = {0: "patches"}
        return GraphSpec(name="vision_par", inputs=inputs,
                         outputs=("image_embeds", "deepstack_embeds", "num_kept", "keep_index"),
                         dynamic_axes={"pixel_values": patches, "vision_position_ids": patches,
                                       "pos_embed_index": patches, "pos_embed_weight": patches,
                                       "cu_seqlens": {0: "images_p1"}, "query_embeds": images, "image_embeds": images,
                                       "deepstack_embeds": {1: "images"}, "num_kept": images, "keep_index": images})

    def vision_module(self, qwen, budget) -> nn.Module:
        return Qwen3VisionParGraph(qwen, budget)

    def extra_metadata(self, qwen) -> dict:
        visual = qwen.visual
        return {"patch_size": visual.patch_size, "spatial_merge_size": visual.spatial_merge_size,
                "temporal_patch_size": qwen.model.config.vision_config.temporal_patch_size,
                "position_grid_side": visual.num_grid_per_side,
                "deepstack_levels": len(visual.deepstack_visual_indexes)}

    def shape_bounds(self, max_sequence: int, geometry: dict | None = None) -> dict:
        bounds = super().shape_bounds(max_sequence, geometry)
        patches = bounds.pop("window_ids")
        del bounds["window_index"]
        bounds.update({"pos_embed_index": patches, "pos_embed_weight": patches})
        return bounds

    def _case_feed(self, geometry: dict, grids_hw: list[tuple[int, int]], rng, dtype) -> dict:
        patch = geometry["patch_size"]
        width = 3 * geometry["temporal_patch_size"] * patch * patch
        feed = qwen3_vision_inputs(geometry, np.array([[1, h, w] for h, w in grids_hw], np.int64))
        feed["pos_embed_weight"] = feed["pos_embed_weight"].astype(dtype)
        feed["pixel_values"] = rng.standard_normal((len(feed["vision_position_ids"]), width)).astype(dtype)
        return feed


FAMILY = ModelFamily(
    name="qwen3_vl",
    description="Qwen3-VL: Qwen3VLForConditionalGeneration, dynamic resolution, interleaved M-RoPE, DeepStack",
    adapter=ReducedQwen3VL,
    onnx_config=Qwen3VLOnnxConfig,
    image_token="<|image_pad|>",
    fallback_template=FALLBACK_TEMPLATE,
    places_rows=True,
)
