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

import torch

from par_export.models.clip_vision import cls_attention, hidden_state_index
from par_export.models.family import ModelFamily
from par_export.models.llava import CHAT_TEMPLATE, FALLBACK_TEMPLATE, ReducedBatch, ReducedLlava, image_token_runs

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


class ReducedLlavaNext(ReducedLlava):
    """A ``LlavaNextForConditionalGeneration`` whose packed image features go through a reducer.

    Same arguments as :class:`ReducedLlava`; ``prepare_inputs`` takes ``image_sizes`` and its
    ``ReducedBatch.reduction`` is a list with one ``ReductionOutput`` (batch 1) per image.
    """

    model_class = "LlavaNextForConditionalGeneration"
    model_types = ("llava_next",)

    def _check_model(self) -> None:
        super()._check_model()
        if getattr(self.model.config, "vision_feature_select_strategy", "default") != "default":
            raise ValueError("only vision_feature_select_strategy 'default' is supported")

    @property
    def tokens_per_crop(self) -> int:
        vision = self.model.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def layouts(self, image_sizes: torch.Tensor, crops: list[int]) -> list[ImageLayout]:
        """The packed order of every image, from the model's own ``pack_image_features`` applied to
        token indices (so the layout is transformers' by construction)."""
        inner = self.model.model
        length = self.tokens_per_crop
        indices = [torch.arange(p * length, dtype=torch.float64).view(p, length, 1) for p in crops]
        packed, _ = inner.pack_image_features(indices, image_sizes, "default",
                                              image_newline=torch.full((1,), float(NEWLINE), dtype=torch.float64))
        return [ImageLayout(p[:, 0].round().long()) for p in packed]

    def crops_per_image(self, image_sizes: torch.Tensor) -> list[int]:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        cfg = self.model.config
        return [image_size_to_num_patches(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
                for size in image_sizes]

    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None):
        """``pixel_values [I, P_max, 3, S, S]`` + ``image_sizes [I, 2]`` -> per image, content tokens
        ``[N_i, Dv]`` in packed order, their CLS attention ``[N_i]`` (within their crop), and the layout."""
        if image_sizes is None:
            raise ValueError("LLaVA-NeXT needs image_sizes (the processor's output) with pixel_values")
        crops = self.crops_per_image(image_sizes)
        flat = torch.cat([p[:c] for p, c in zip(pixel_values, crops)])
        tower = self.vision_tower
        hidden = tower(flat.to(next(tower.parameters()).dtype), output_hidden_states=True).hidden_states
        index = hidden_state_index(self.model.config.vision_feature_layer, len(hidden) - 1)
        attn = cls_attention(tower.encoder.layers[index - 1], hidden[index - 1])  # [sum P, L]
        tokens = hidden[index][:, 1:]  # [sum P, L, Dv]
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
        budgets = budget if isinstance(budget, (list, tuple)) else [budget] * len(features)
        if len(budgets) != len(features):
            raise ValueError(f"{len(budgets)} budgets for {len(features)} images")
        prompt_embedding = prompt_mask = None
        if self.reducer.uses_prompt and prompts is not None and self.query_encoder is not None:
            prompt_embedding, prompt_mask = self.query_encoder(prompts)
        reductions, rows = [], []
        newline = self.model.model.image_newline
        for i, ((tokens, attn, layout), k) in enumerate(zip(features, budgets)):
            n = tokens.shape[0]
            if isinstance(k, int) and k > n:
                raise ValueError(f"image {i}: budget {k} exceeds its {n} visual tokens")
            query = None if prompt_embedding is None else (prompt_embedding[i:i + 1], prompt_mask[i:i + 1])
            out = self.reducer(tokens[None], None if query is None else query[0], attn[None], budget=k,
                               prompt_mask=None if query is None else query[1])
            kept = int(out.num_kept[0])
            projected = self.projector(out.tokens[0, :kept])
            rows.append(self._with_newlines(projected, out.keep_index[0, :kept], layout, newline))
            reductions.append(out)
        return reductions, rows

    @staticmethod
    def _with_newlines(projected: torch.Tensor, keep_index: torch.Tensor, layout: ImageLayout,
                       newline: torch.Tensor) -> torch.Tensor:
        """Kept rows in packed order with a newline after each grid row that kept a token."""
        kept = torch.zeros(len(layout.content), dtype=torch.bool)
        kept[keep_index] = True
        pieces, cursor, row_has_token, content_pos = [], 0, False, 0
        for entry in layout.order.tolist():
            if entry == NEWLINE:
                if row_has_token:
                    pieces.append(newline[None].to(projected.dtype))
                row_has_token = False
                continue
            if kept[content_pos]:
                pieces.append(projected[cursor:cursor + 1])
                cursor += 1
                row_has_token = True
            content_pos += 1
        return torch.cat(pieces)

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
                raise ValueError(f"image {i}: a run of {length} image tokens, but its size gives {len(layout.order)} "
                                 "rows (expand <image> with LlavaNextProcessor and pass its image_sizes)")
        reductions, image_features = self.reduce_images(pixel_values, image_prompts, budget, features, image_sizes)
        return self._reduced_batch(input_ids, attention_mask, reductions, image_features, image_prompts)

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


FAMILY = ModelFamily(
    name="llava_next",
    description="LLaVA-NeXT: LlavaNextForConditionalGeneration, anyres tiles + base image, CLIP tower "
                "(PyTorch reduction; ONNX export not yet)",
    model_types=ReducedLlavaNext.model_types,
    model_class=ReducedLlavaNext.model_class,
    adapter=ReducedLlavaNext,
    onnx_config=None,  # anyres packing depends on each image's size: not in the exported graph yet
    image_token="<image>",
    fallback_template=FALLBACK_TEMPLATE,
)

__all__ = ["CHAT_TEMPLATE", "FAMILY", "ImageLayout", "ReducedLlavaNext"]
