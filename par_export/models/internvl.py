"""The InternVL family (``InternVLForConditionalGeneration``: transformers' native "-hf" layout of
InternVL3 and 3.5): a reducer over each image's tokens across all its tiles.

Tiles. The processor (``GotOcr2ImageProcessor``, ``crop_to_patches``) cuts an image into a grid of
448 x 448 tiles picked by its aspect ratio (up to ``max_patches``) and, when there is more than one,
adds a thumbnail of the whole image last. Each tile becomes ``image_seq_length`` tokens (InternViT,
pixel shuffle 0.5 of its 32 x 32 patches, MLP projector): 256 at 448 px. The prompt holds
``<img>``, one ``<IMG_CONTEXT>`` per token of every tile, ``</img>``.

What the reducer sees: one image's N = tiles x 256 projected tokens in the processor's order (tile
after tile, the thumbnail last), with the CLS attention of the last tower layer summed over the
2 x 2 patches each token merges. Tiles and the thumbnail count alike toward K: the budget is one
image's, not one tile's, so a question about a small detail can keep most of its tokens from the tile
that shows it, and the thumbnail's tokens (the whole image at low resolution) are kept where they
are the most relevant or the least redundant, like any others. Retrieval is in the LLM's space
(there is no CLIP text tower). The kept rows take the image's ``<IMG_CONTEXT>`` run (shrunk to K);
the LLM's 1D positions follow the shortened sequence, as for LLaVA. With K = N the sequence is the
stock one (tested token for token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from par_export.errors import ParExportError
from par_export.models.family import ModelFamily
from par_export.models.graphs import VisionParGraph
from par_export.models.llava import ReducedBatch, ReducedLlava, image_token_runs, resize_image_runs
from par_export.models.llava_next import LlavaNextOnnxConfig
from par_export.models.onnx_config import Case, GraphSpec
from par_export.models.per_image import reduce_each
from par_export.reduce import PARConfig

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<IMG_CONTEXT>\n{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""InternVL3-hf's chat format (ChatML, ``<IMG_CONTEXT>`` per image), for the tiny test folders."""
FALLBACK_TEMPLATE = "<|im_start|>user\n<IMG_CONTEXT>\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
NO_CLIP = "InternVL reduces in the LLM's input space: it takes no CLIP folder (--clip)"


def cls_attention(layer: nn.Module, layer_input: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention of the CLS token to the patch tokens in one InternViT layer, from the
    layer's input with its own norms and projections: ``[B, 1 + P, Dv]`` -> ``[B, P]`` float32."""
    attn = layer.attention
    b, t, _ = layer_input.shape
    normed = layer.layernorm_before(layer_input)
    q = attn.q_norm(attn.q_proj(normed))[:, :1].view(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(normed)).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
    weights = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scale, dim=-1)  # [B, H, 1, 1+P]
    return weights[:, :, 0, 1:].mean(dim=1)


class ReducedInternVL(ReducedLlava):
    """An ``InternVLForConditionalGeneration`` whose image tokens (all tiles of an image) go through a
    reducer. Arguments as :class:`ReducedLlava`; ``space`` is always ``"llm"`` (no CLIP). The tiles of
    each image are its run of ``<IMG_CONTEXT>`` tokens over the tokens per tile, as the processor
    wrote them."""

    model_class = "InternVLForConditionalGeneration"
    model_types = ("internvl",)

    def __init__(self, model, method="par", config=None, tokenizer=None, clip=None):
        if clip is not None:
            raise ParExportError(NO_CLIP)
        super().__init__(model, method, (config or PARConfig()).replace(space="llm"), tokenizer, None)
        # tile_features returns the projector's output (the stock get_image_features): nothing is left
        # to project before or after the reducer
        self.projector = nn.Identity()

    @classmethod
    def from_pretrained(cls, path, method="par", config=None, clip_path=None, dtype=None) -> ReducedInternVL:
        if clip_path is not None:  # before anything loads
            raise ParExportError(NO_CLIP)
        return super().from_pretrained(path, method, config, None, dtype)

    def _check_model(self) -> None:
        cfg = self.model.config
        if cfg.vision_feature_layer != -1 or cfg.vision_feature_select_strategy != "default":
            raise ParExportError(f"vision_feature_layer {cfg.vision_feature_layer!r} / select strategy "
                                 f"{cfg.vision_feature_select_strategy!r}: only the last layer without CLS "
                                 "(InternVL3's -1 / 'default') is supported")
        if self.reducer.tower_inputs:
            raise ParExportError(f"method {self.reducer.name!r} (an authors' form) runs on LLaVA-1.5 only so far; "
                                 f"use its variant ({self.reducer.name}_mean where there is one)")

    @property
    def tokens_per_image(self) -> int:
        """Tokens of one tile (an image has one or more tiles)."""
        return int(self.model.config.image_seq_length)

    @property
    def run_length(self) -> None:
        return None  # an image's run has tiles x tokens_per_image tokens

    @property
    def reduces_projected(self) -> bool:
        return True  # the tokens are reduced after the projector, in the LLM's space

    @property
    def clusters_tower_tokens(self) -> bool:
        return False  # before the projector a token is 4 x 1024 wide (pixel shuffle): wider than its row

    def tile_features(self, tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tiles [C, 3, S, S]`` -> projected tokens ``[C, L, D]`` (the stock ``get_image_features``) and
        the CLS attention each receives in the last tower layer ``[C, L]`` (summed over the patches
        the pixel shuffle merges into it, by the model's own ``pixel_shuffle``)."""
        inner = self.model.model
        captured = {}
        hook = inner.vision_tower.encoder.layer[-1].register_forward_pre_hook(
            lambda module, args: captured.__setitem__("input", args[0]))
        try:
            tokens = inner.get_image_features(pixel_values=tiles).pooler_output
        finally:
            hook.remove()
        attn = cls_attention(inner.vision_tower.encoder.layer[-1], captured["input"])  # [C, P]
        vision = self.model.config.vision_config
        side = vision.image_size[0] // vision.patch_size[0]  # patches per tile side (static: the graph traces it)
        merged = inner.pixel_shuffle(attn.reshape(-1, side, side, 1), scale_factor=self.model.config.downsample_ratio)
        return tokens, merged.sum(-1).reshape(tokens.shape[0], -1)

    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixel_values [sum C, 3, S, S]`` (every tile of every image) -> :meth:`tile_features`."""
        dtype = next(self.model.model.vision_tower.parameters()).dtype
        return self.tile_features(pixel_values.to(dtype))

    def per_image(self, features: tuple[torch.Tensor, torch.Tensor], tiles: list[int]) -> list:
        """All tiles' ``(tokens [sum C, L, D], attn [sum C, L])`` -> per image with ``tiles[i]`` tiles, its
        tokens ``[N_i, D]`` (processor order, N_i = C_i x L) and their attention ``[N_i]``."""
        tokens, attn = features
        if sum(tiles) != tokens.shape[0]:
            raise ParExportError(f"the prompts' image runs hold {sum(tiles)} tiles, but pixel_values has "
                                 f"{tokens.shape[0]} (expand <IMG_CONTEXT> with the same processor call)")
        return [(t.flatten(0, 1), a.flatten()) for t, a in zip(torch.split(tokens, tiles), torch.split(attn, tiles))]

    def tiles_per_image(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
        """Tiles of each image, in order: its run of ``<IMG_CONTEXT>`` over the tokens per tile (the
        processor drops its ``num_patches``)."""
        runs = [length for b in range(input_ids.shape[0]) for _, length in
                image_token_runs(input_ids[b][attention_mask[b].bool()], self.model.config.image_token_id)]
        for i, length in enumerate(runs):
            if length % self.tokens_per_image:
                raise ParExportError(f"image {i}: a run of {length} image tokens, not a whole number of tiles of "
                                     f"{self.tokens_per_image} (expand <IMG_CONTEXT> with the InternVL processor)")
        return [length // self.tokens_per_image for length in runs]

    @torch.no_grad()
    def reduce_images(self, pixel_values, prompts, budget=None, features=None, tiles: list[int] | None = None):
        """Each image (``tiles[i]`` tiles of ``pixel_values``) reduced for its prompt: its
        ``ReductionOutput`` (batch 1) and rows ``[K_i, D]``."""
        features = features if features is not None else self.vision_features(pixel_values)
        images = self.per_image(features, tiles if tiles is not None else [features[0].shape[0]])
        outputs = reduce_each(self.reducer, self.query_encoder, images, prompts, budget)
        return outputs, [out.tokens[0, :int(out.num_kept[0])] for out in outputs]

    def prepare_inputs(self, input_ids, attention_mask, pixel_values, prompts=None, budget=None,
                       features=None) -> ReducedBatch:
        """Reduce each image and shrink its run of ``<IMG_CONTEXT>`` tokens to its K rows."""
        attention_mask, image_prompts = self._image_prompts(input_ids, attention_mask, pixel_values, prompts)
        tiles = self.tiles_per_image(input_ids, attention_mask)
        reductions, rows = self.reduce_images(pixel_values, image_prompts, budget, features, tiles)
        return self._reduced_batch(input_ids, attention_mask, reductions, rows, image_prompts)

    def _check_image_count(self, pixel_values, placeholders) -> None:
        pass  # pixel_values holds tiles; per_image checks them against the runs

    def _reduced_batch(self, input_ids, attention_mask, reduction, rows, image_prompts) -> ReducedBatch:
        """Each image's run shrunk to its rows; the rows go in as the model's image features (one
        ``[sum K, D]`` tensor, which the stock forward scatters into the image positions)."""
        new_ids, new_mask = resize_image_runs(input_ids, attention_mask, self.model.config.image_token_id, None,
                                              [r.shape[0] for r in rows], self._pad_token_id())
        device = self.model.device
        model_inputs = {"input_ids": new_ids.to(device), "attention_mask": new_mask.to(device),
                        "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=torch.cat(list(rows)))}}
        return ReducedBatch(model_inputs, reduction, list(rows), image_prompts)

    def inputs_from_rows(self, input_ids, attention_mask, image_layout, rows, keep) -> dict:
        """``generate`` inputs for rows made elsewhere (an exported graph); ``image_layout`` is unused
        (the runs say how many tiles each image had)."""
        return self._reduced_batch(input_ids, attention_mask, None, list(rows), None).model_inputs


class InternVLVisionParGraph(VisionParGraph):
    """``vision_par.onnx`` for one InternVL image: its tiles through the tower, pixel shuffle and
    projector, all its tokens reduced together.

    Inputs: ``pixel_values [C, 3, S, S]`` (C tiles, the thumbnail last), ``query_embeds [1, D]``,
    ``budget``. Outputs: ``image_embeds [1, W, D]``, ``num_kept [1]``, ``keep_index [1, W]`` (into the
    image's N = C x L tokens, processor order)."""

    def __init__(self, llava, budget):
        super().__init__(llava, budget)
        self.multi_modal_projector = llava.model.model.multi_modal_projector  # registered: its weights are the graph's

    def forward(self, pixel_values, query_embeds, budget=None):
        tokens, attn = self.llava.tile_features(pixel_values)
        return self.reduce_and_project(tokens.flatten(0, 1).unsqueeze(0), attn.flatten().unsqueeze(0), query_embeds,
                                       budget)


@dataclass(frozen=True)
class InternVLOnnxConfig(LlavaNextOnnxConfig):
    """InternVL's export: one image per call, its C tiles (1 to ``max_patches`` + the thumbnail), N = C x
    L dynamic; ``tokens_per_image`` is one tile's L (the smallest image), which bounds the width."""

    @property
    def vision_par(self) -> GraphSpec:
        inputs = ("pixel_values", "query_embeds") + (("budget",) if self.budget_input else ())
        return GraphSpec(name="vision_par", inputs=inputs, outputs=("image_embeds", "num_kept", "keep_index"),
                         dynamic_axes={"pixel_values": {0: "tiles"}})

    def shape_bounds(self, max_sequence: int, geometry: dict | None = None) -> dict:
        bounds = super(LlavaNextOnnxConfig, self).shape_bounds(max_sequence)
        del bounds["query_embeds"]  # one image per call
        bounds["pixel_values"] = {"0": [1, geometry["max_tiles"]]}
        return bounds

    def vision_module(self, llava, budget) -> nn.Module:
        return InternVLVisionParGraph(llava, budget)

    def min_tokens(self, llava) -> int:
        return llava.tokens_per_image  # one tile

    def extra_metadata(self, llava) -> dict:
        size = llava.model.config.vision_config.image_size
        return {"tokens_per_tile": llava.tokens_per_image, "tile_size": list(size) if isinstance(size, (list, tuple))
                else [size, size], "max_tiles": int(getattr(llava, "max_tiles", 13))}

    def dummy_inputs(self, llava, query_dim: int) -> tuple[torch.Tensor, ...]:
        height, width = self.extra_metadata(llava)["tile_size"]
        dummy = (torch.randn(3, 3, height, width), torch.randn(1, query_dim))
        if self.budget_input:
            dummy += (torch.tensor(min(16, llava.tokens_per_image), dtype=torch.int64),)
        return dummy

    def vision_cases(self, geometry: dict, query_dim: int, budgets: list, seed: int = 0) -> list[Case]:
        """One image per case with 1, 3, 5 and 7 tiles (N varies), the budgets spread over them; a zero
        query row too."""
        rng = np.random.default_rng(seed)
        dtype = np.float16 if self.fp16 else np.float32
        height, width = geometry["tile_size"]
        tiles = [t for t in (1, 3, 5, 7) if t <= geometry["max_tiles"]]
        cases = []
        for i in range(max(len(tiles), len(budgets))):
            count, budget = tiles[i % len(tiles)], budgets[i % len(budgets)]
            feed = {"pixel_values": rng.standard_normal((count, 3, height, width)).astype(dtype),
                    "query_embeds": rng.standard_normal((1, query_dim)).astype(dtype) * (i != 2)}
            cases.append(self.case(f"tiles={count} N={count * geometry['tokens_per_tile']}", feed, budget))
        return cases


FAMILY = ModelFamily(
    name="internvl",
    description="InternVL3/3.5 (-hf): InternVLForConditionalGeneration, dynamic tiles + thumbnail, pixel shuffle",
    adapter=ReducedInternVL,
    onnx_config=InternVLOnnxConfig,
    image_token="<IMG_CONTEXT>",
    fallback_template=FALLBACK_TEMPLATE,
    places_rows=True,
)
