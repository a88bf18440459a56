"""The LLaVA-NeXT family (``LlavaNextForConditionalGeneration``, anyres): a reducer over each
image's whole visual sequence (base image + up to 4 tiles, up to 2880 tokens at 336 px).

Layout. transformers packs an image as the base image's tokens, then the tiles' tokens
rearranged into one unpadded grid, row by row, each grid row followed by one
``image_newline`` row (a learned vector that marks the end of a row). The adapter
computes that layout once per image (by packing token indices through the model's own
``pack_image_features``), hands the reducer the N content tokens in packed order
``[1, N, Dv]`` with their CLS attention, and projects what it keeps.

Newline rows. They carry no image content, so they are never scored or merged and do
not count toward the budget K. A newline row is kept after every grid row that keeps at
least one token, so the LLM still sees the row structure it was trained on; rows that
lose all their tokens lose their newline too. With K = N every newline is kept and the
sequence is exactly the stock one (budget = N reproduces ``generate`` token for token).

Budgets are per image (N differs with the aspect ratio): an int applies to every image
and must not exceed any image's N (the error names the image), or one int per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import transformers
from torch import nn

from par_export.errors import ParExportError
from par_export.models.family import ModelFamily
from par_export.models.graphs import VisionParGraph
from par_export.models.layouts import LAYOUTS, rows_with_newlines
from par_export.models.llava import (
    CHAT_TEMPLATE,
    FALLBACK_TEMPLATE,
    LlavaOnnxConfig,
    ReducedBatch,
    ReducedLlava,
    image_token_runs,
)
from par_export.models.onnx_config import Case, GraphSpec
from par_export.models.per_image import reduce_each

NEWLINE = -1  # layout entry of an image_newline row


@dataclass
class ImageLayout:
    """One image's packed visual sequence.

    Attributes:
        order: ``[T]`` int64: for each packed row, the index of its token in the flattened tower
            output ``[P * L]`` (P crops of L patch tokens), or :data:`NEWLINE`.
    """

    order: torch.Tensor

    @property
    def content(self) -> torch.Tensor:
        """``[N]`` flattened tower indices of the content rows, in packed order."""
        return self.order[self.order != NEWLINE]


def crops_per_image(config, image_sizes) -> list[int]:
    """Crops (base + tiles) of each image of size ``(height, width)``, as transformers counts them."""

    return [transformers.models.llava_next.modeling_llava_next.image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
            for size in image_sizes]


def image_layouts(config, image_sizes, crops: list[int]) -> list[ImageLayout]:
    """The packed order of every image: transformers' own ``pack_image_features`` applied to token
    indices, so the layout is the model's by construction. It reads only ``self.config``, so it is
    called with the config alone (an artifact's runtime has no weights)."""

    length = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    indices = [torch.arange(p * length, dtype=torch.float64).view(p, length, 1) for p in crops]
    packed, _ = transformers.models.llava_next.modeling_llava_next.LlavaNextModel.pack_image_features(
        SimpleNamespace(config=config), indices, torch.as_tensor(image_sizes), "default",
        image_newline=torch.full((1,), float(NEWLINE), dtype=torch.float64))
    return [ImageLayout(p[:, 0].round().long()) for p in packed]


def with_newlines(rows: torch.Tensor, keep_index: torch.Tensor, layout: ImageLayout,
                  newline: torch.Tensor) -> torch.Tensor:
    """Kept rows ``[K, D]`` in packed order with a newline row after each grid row that kept a token
    (the rule of :func:`~par_export.models.layouts.rows_with_newlines`, shared with the artifact)."""
    table = torch.cat([rows, newline[None].to(rows.dtype)])  # row K: the newline
    plan = rows_with_newlines(layout.order.numpy(), keep_index.cpu().numpy())
    return table[torch.from_numpy(plan).to(rows.device)]


class ReducedLlavaNext(ReducedLlava):
    """A ``LlavaNextForConditionalGeneration`` whose packed image features go through a reducer.

    Same arguments as :class:`ReducedLlava`; ``prepare_inputs`` takes ``image_sizes`` and its
    ``ReducedBatch.reduction`` is a list with one ``ReductionOutput`` (batch 1) per image.
    """

    model_class = "LlavaNextForConditionalGeneration"
    model_types = ("llava_next",)

    def _check_model(self) -> None:
        super()._check_model()
        if self.reducer.tower_inputs:
            raise ParExportError(f"method {self.reducer.name!r} (an authors' form) runs on LLaVA-1.5 only so far; "
                             f"use its variant ({self.reducer.name}_mean where there is one)")
        if getattr(self.model.config, "vision_feature_select_strategy", "default") != "default":
            raise ParExportError("only vision_feature_select_strategy 'default' is supported")

    @property
    def tokens_per_crop(self) -> int:
        vision = self.model.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def layouts(self, image_sizes: torch.Tensor, crops: list[int]) -> list[ImageLayout]:
        return image_layouts(self.model.config, image_sizes, crops)

    def crops_per_image(self, image_sizes: torch.Tensor) -> list[int]:
        return crops_per_image(self.model.config, image_sizes)

    def crop_features(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[C, 3, S, S]`` crops -> patch tokens ``[C, L, Dv]`` and CLS attention ``[C, L]`` (per crop)."""
        return ReducedLlava.vision_features(self, crops)

    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None):
        """``pixel_values [I, P_max, 3, S, S]`` + ``image_sizes [I, 2]`` -> per image, content tokens
        ``[N_i, Dv]`` in packed order, their CLS attention ``[N_i]`` (within their crop), and the layout."""
        if image_sizes is None:
            raise ParExportError("LLaVA-NeXT needs image_sizes (the processor's output) with pixel_values")
        crops = self.crops_per_image(image_sizes)
        tokens, attn = self.crop_features(torch.cat([p[:c] for p, c in zip(pixel_values, crops)]))
        out, start = [], 0
        for layout, c in zip(self.layouts(image_sizes, crops), crops):
            t = tokens[start:start + c].flatten(0, 1)
            a = attn[start:start + c].flatten()
            out.append((t[layout.content], a[layout.content], layout))
            start += c
        return out

    @torch.no_grad()
    def reduce_images(self, pixel_values, prompts, budget=None, features=None, image_sizes=None):
        """Reduce each image for its prompt: per image the reducer's output and the packed rows
        ``[K_i + newline rows, D_llm]`` the LLM receives."""
        features = features if features is not None else self.vision_features(pixel_values, image_sizes)
        reductions = reduce_each(self.reducer, self.query_encoder,
                                 [(self.to_reducer_space(t), a) for t, a, _ in features], prompts, budget,
                                 cluster=[self.cluster_tokens(t) for t, _, _ in features])
        rows = []
        newline = self.model.model.image_newline
        for (_, _, layout), out in zip(features, reductions):
            kept = int(out.num_kept[0])
            projected = self.to_llm_space(out.tokens[0, :kept])
            rows.append(with_newlines(projected, out.keep_index[0, :kept], layout, newline))
        return reductions, rows

    def prepare_inputs(self, input_ids, attention_mask, pixel_values, prompts=None, budget=None, features=None,
                       image_sizes=None) -> ReducedBatch:
        """Reduce the images and shrink each image's run of image tokens to its packed rows.

        Args:
            input_ids: ``[B, T]`` as ``LlavaNextProcessor`` gives them (one run per image).
            pixel_values: ``[I, P_max, 3, S, S]``; image_sizes: ``[I, 2]`` (height, width).
            budget: int, one int per image, ``"auto"`` or ``None`` (``config.budget``).
        """
        attention_mask, image_prompts = self._image_prompts(input_ids, attention_mask, pixel_values, prompts)
        features = features if features is not None else self.vision_features(pixel_values, image_sizes)
        runs = [length for b in range(input_ids.shape[0]) for _, length in
                image_token_runs(input_ids[b][attention_mask[b].bool()], self.model.config.image_token_id)]
        for i, (length, (_, _, layout)) in enumerate(zip(runs, features)):
            if length != len(layout.order):
                raise ParExportError(f"image {i}: a run of {length} image tokens, but its size gives {len(layout.order)} "
                                 "rows (expand <image> with LlavaNextProcessor and pass its image_sizes)")
        reductions, image_features = self.reduce_images(pixel_values, image_prompts, budget, features, image_sizes)
        return self._reduced_batch(input_ids, attention_mask, reductions, image_features, image_prompts)

    def inputs_from_rows(self, input_ids, attention_mask, image_sizes, rows, keep) -> dict:
        """``generate`` inputs for rows made elsewhere (an exported graph, newlines placed):
        each image's run of image tokens shrunk to its rows."""
        return self._reduced_batch(input_ids, attention_mask, None, list(rows), None).model_inputs

    @property
    def run_length(self) -> None:
        return None  # each image's run has its own length (base + unpadded tiles + newlines)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values, prompts=None, budget=None, image_sizes=None,
                 **generate_kwargs) -> torch.Tensor:
        """``model.generate`` on the reduced context; returns the new tokens only ``[B, new]``."""
        batch = self.prepare_inputs(input_ids, attention_mask, pixel_values, prompts, budget, image_sizes=image_sizes)
        out = self.model.generate(**batch.model_inputs, **generate_kwargs)
        return out[:, batch.model_inputs["input_ids"].shape[1]:]


class LlavaNextVisionParGraph(VisionParGraph):
    """``vision_par.onnx`` for one LLaVA-NeXT image: its crops through the tower, the content rows
    gathered in packed order, the reducer, the projector.

    Inputs: ``pixel_values [C, 3, S, S]`` (C crops: base + tiles), ``content_index [N]`` int64
    (flattened ``[C * L]`` tower row of each content row, packed order: the runtime computes it
    from the image size with :func:`image_layouts`), ``query_embeds [1, Dq]``, ``budget``.
    Outputs: ``image_embeds [1, W, D_llm]``, ``num_kept [1]``, ``keep_index [1, W]`` (into the N
    content rows) and ``image_newline [D_llm]``, which the runtime places after each grid row that
    keeps a token (:func:`with_newlines`).
    """

    def __init__(self, llava, budget):
        super().__init__(llava, budget)
        self.image_newline = llava.model.model.image_newline  # registered: a graph initializer

    def forward(self, pixel_values, content_index, query_embeds, budget=None):
        tokens, attn = self.llava.crop_features(pixel_values)
        tokens = tokens.flatten(0, 1).index_select(0, content_index).unsqueeze(0)  # [1, N, Dv]
        attn = attn.flatten().index_select(0, content_index).unsqueeze(0)  # [1, N]
        embeds, num_kept, keep_index, *scores = self.reduce_and_project(tokens, attn, query_embeds, budget)
        return embeds, num_kept, keep_index, self.image_newline * 1.0, *scores  # scores: reference only


LAYOUT = LAYOUTS["llava_next"]  # the runtime's numpy layout: the export's cases are fed as an artifact is


@dataclass(frozen=True)
class LlavaNextOnnxConfig(LlavaOnnxConfig):
    """LLaVA-NeXT's export: one image per call (its N depends on its size), the token axis dynamic.

    ``tokens_per_image`` in the metadata is the smallest N (the whole base crop), which bounds the
    graph's width ``min(k_max, N)``; validation runs images of several aspect ratios (C and N vary)."""

    dynamic_tokens = True
    validation_batches = (1,)

    @property
    def vision_par(self) -> GraphSpec:
        inputs = ("pixel_values", "content_index", "query_embeds") + (("budget",) if self.budget_input else ())
        return GraphSpec(name="vision_par", inputs=inputs,
                         outputs=("image_embeds", "num_kept", "keep_index", "image_newline"),
                         dynamic_axes={"pixel_values": {0: "crops"}, "content_index": {0: "tokens"}})

    def shape_bounds(self, max_sequence: int, geometry: dict | None = None) -> dict:
        """Crops from 1 to 1 + the largest grid's tiles; N from the base crop to all crops' tokens."""
        bounds = super().shape_bounds(max_sequence)
        del bounds["query_embeds"]  # one image per call
        size = geometry["image_size"]
        crops = 1 + max((h // size) * (w // size) for h, w in geometry["image_grid_pinpoints"])
        bounds["pixel_values"] = {"0": [1, crops]}
        bounds["content_index"] = {"0": [geometry["tokens_per_crop"], crops * geometry["tokens_per_crop"]]}
        return bounds

    def vision_module(self, llava, budget) -> nn.Module:
        return LlavaNextVisionParGraph(llava, budget)

    def min_tokens(self, llava) -> int:
        return llava.tokens_per_crop  # the base crop is never unpadded

    def extra_metadata(self, llava) -> dict:
        cfg = llava.model.config
        return {"tokens_per_crop": llava.tokens_per_crop, "image_grid_pinpoints": cfg.image_grid_pinpoints,
                "patch_size": cfg.vision_config.patch_size}

    def dummy_inputs(self, llava, query_dim: int) -> tuple[torch.Tensor, ...]:
        size = llava.model.config.vision_config.image_size
        feed, _ = LAYOUT.crops_feed(self.extra_metadata(llava) | {"image_size": size},
                                  np.zeros((5, 3, size, size), np.float32), (2 * size, 2 * size))
        dummy = (torch.randn(feed["pixel_values"].shape), torch.from_numpy(feed["content_index"]),
                 torch.randn(1, query_dim))
        if self.budget_input:
            dummy += (torch.tensor(min(16, llava.tokens_per_crop), dtype=torch.int64),)
        return dummy

    def vision_cases(self, geometry: dict, query_dim: int, budgets: list, seed: int = 0) -> list[Case]:
        """One image per case: wide, tall, square and small, so C and N vary, the budgets spread over
        them (the tower is what the image changes); a zero query row too."""
        rng = np.random.default_rng(seed)
        dtype = np.float16 if self.fp16 else np.float32
        s = geometry["image_size"]
        sizes = [(s * 5 // 8, 2 * s + 6), (2 * s + 12, s * 3 // 4), (2 * s, 2 * s), (s, s * 3 // 2)]
        cases = []
        for i in range(max(len(sizes), len(budgets))):
            (h, w), budget = sizes[i % len(sizes)], budgets[i % len(budgets)]
            pixels = rng.standard_normal((5, 3, s, s)).astype(dtype)
            feed, _ = LAYOUT.crops_feed(geometry, pixels, (h, w))
            feed["query_embeds"] = rng.standard_normal((1, query_dim)).astype(dtype) * (i != 3)
            cases.append(self.case(f"image={w}x{h} N={len(feed['content_index'])}", feed, budget))
        return cases


FAMILY = ModelFamily(
    name="llava_next",
    description="LLaVA-NeXT: LlavaNextForConditionalGeneration, anyres tiles + base image, CLIP tower",
    adapter=ReducedLlavaNext,
    onnx_config=LlavaNextOnnxConfig,
    image_token="<image>",
    fallback_template=FALLBACK_TEMPLATE,
)

__all__ = ["CHAT_TEMPLATE", "FAMILY", "ImageLayout", "ReducedLlavaNext"]
