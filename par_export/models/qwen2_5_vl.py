"""The Qwen2.5-VL family (``Qwen2_5_VLForConditionalGeneration``): a reducer over each image's
merged tokens, with M-RoPE positions kept right.

Tokens. The reducer sees each image's tokens after the patch merger, ``[1, N, D_llm]`` with
``N = t * h * w / 4`` (differs per image with dynamic resolution), in the merger's output
order (raster order of the merged grid). They are already in the LLM's embedding space,
so retrieval is in LLM space (``space="llm"``): the prompt's input embeddings against the
merged tokens (Qwen has no CLIP text tower).

Prompt-agnostic scores. The tower has no CLS token. ``cls_attn``-style reducers (and PAR's
no-prompt fallback) get the attention each merged token *receives* in the tower's last
full-attention block, averaged over heads and over all query patches of its image, summed
over the 4 patches merged into it: the CLS-free form of "what the encoder attends to".

Positions. Each kept token keeps the (t, h, w) M-RoPE position of its token in the full
grid (a merged token already has one position: its 2x2 block's). Text after an image
continues from that image's full-grid start + max(h, w) / 2, exactly as stock
``get_rope_index`` does, so text positions do not depend on K. The adapter passes
``position_ids [4, B, T]`` (row 0: text positions for the mask, rows 1-3: M-RoPE) to
``generate``, which extends every row by one per decoded token, as it does for stock
text tokens.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import transformers
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from par_export.errors import ParExportError
from par_export.models.family import ModelFamily
from par_export.models.graphs import VisionParGraph
from par_export.models.llava import image_token_runs, resize_image_runs
from par_export.models.loading import load_pretrained_model, pretrained_kwargs
from par_export.models.onnx_config import Case, GraphSpec, VisionParOnnxConfig
from par_export.models.per_image import reduce_each
from par_export.models.query import LlmQueryEncoder
from par_export.reduce import PARConfig, ReductionOutput, TokenReducer, create_reducer

# Qwen2.5-VL's chat template for one user turn with images and text (as Qwen's checkpoints ship
# it, without the default system prompt and the video/tool branches).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FALLBACK_TEMPLATE = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n" \
                    "<|im_start|>assistant\n"


@dataclass
class ReducedQwenBatch:
    """Inputs for ``model.generate(**model_inputs)`` and what was kept.

    Attributes:
        model_inputs: ``input_ids``, ``attention_mask`` ``[B, T']`` (left padded, K_i image tokens
            per image), ``position_ids [4, B, T']`` and ``mm_encoder_outputs``.
        reduction: one ``ReductionOutput`` (batch 1) per image.
        image_features: per image ``[K_i, D_llm]``.
        prompts: the prompt each image's query came from.
    """

    model_inputs: dict
    reduction: list[ReductionOutput]
    image_features: list[torch.Tensor]
    prompts: list[str]


class ReducedQwen2_5_VL:
    """A ``Qwen2_5_VLForConditionalGeneration`` whose merged image tokens go through a reducer.

    Args:
        model: the Qwen2.5-VL model.
        method: a registered reducer name or a :class:`TokenReducer`.
        config: reducer options; ``space`` is always ``"llm"`` here (a warning says so if
            ``"clip"`` was asked).
        tokenizer: the checkpoint's tokenizer (query tokens, prompts decoded from ids).
    """

    model_class = "Qwen2_5_VLForConditionalGeneration"
    model_types = ("qwen2_5_vl",)
    dynamic_tokens = True  # N differs per image (dynamic resolution)

    def __init__(self, model, method: str | TokenReducer = "par", config: PARConfig | None = None,
                 tokenizer=None, clip=None):
        if clip is not None:
            raise ParExportError("Qwen2.5-VL has no CLIP text tower: PAR retrieves in the LLM's embedding space; "
                             "leave --clip out")
        config = config if config is not None else PARConfig(space="llm")
        if config.space != "llm":
            warnings.warn("Qwen2.5-VL: space=clip needs a CLIP tower it does not have; using space=llm",
                          stacklevel=2)
            config = config.replace(space="llm")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.visual = model.model.visual
        # the names the shared export graph (VisionParGraph) reads: the tower, and no projector,
        # since the merger's tokens are already in the LLM's space
        self.vision_tower = self.visual
        self.projector = nn.Identity()
        self.reduces_projected = True  # the merger's output is already what the LLM receives
        self.query_encoder = None
        if tokenizer is not None:
            self.query_encoder = LlmQueryEncoder(
                model.get_input_embeddings(), tokenizer,
                max_length=model.config.text_config.max_position_embeddings,
                rewrite=config.rewrite, template=config.template)
        self.reducer = method if isinstance(method, TokenReducer) else create_reducer(method, config=config)
        if self.reducer.tower_inputs:
            raise ParExportError(f"method {self.reducer.name!r} (an authors' form) reads a CLIP tower's keys and CLS "
                             "token, which Qwen2.5-VL's tower does not have; use its variant")

    @classmethod
    def from_pretrained(cls, path: str | Path, method: str = "par", config: PARConfig | None = None,
                        clip_path: str | Path | None = None, dtype: torch.dtype | None = None):
        if clip_path is not None:
            raise ParExportError(f"--clip {clip_path}: Qwen2.5-VL retrieves in the LLM's space; it takes no CLIP folder")
        model = load_pretrained_model(path, cls.model_types, cls.model_class, dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **pretrained_kwargs())
        config = (config if config is not None else PARConfig()).replace(space="llm")
        return cls(model, method, config, tokenizer)

    @property
    def merge(self) -> int:
        return self.visual.spatial_merge_size

    def cluster_tokens(self, tokens: torch.Tensor) -> None:
        """What the reducer clusters on besides the rows it merges: nothing (the merger's input is four
        tower tokens per row, wider than the row)."""
        return None

    def tokens_per_image(self, image_grid_thw: torch.Tensor) -> list[int]:
        """N of each image: ``t * h * w / merge**2``."""
        return (image_grid_thw.prod(-1) // self.merge ** 2).tolist()

    # vision ---------------------------------------------------------------------------------
    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor):
        """Per image: merged tokens ``[N_i, D_llm]`` (raster order) and the attention they receive ``[N_i]``."""
        features, _ = self._tower(pixel_values, image_grid_thw)
        return features

    def _tower(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> tuple[list, object]:
        """The tower once: per image ``(merged [N_i, D], received [N_i])``, and its whole output."""
        captured = {}

        def hook(module, args, kwargs):
            captured["hidden"] = args[0] if args else kwargs["hidden_states"]
            captured["cu_seqlens"] = kwargs["cu_seqlens"]
            captured["rope"] = kwargs["position_embeddings"]

        last_full = self.score_block()
        handle = last_full.attn.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            out = self.visual(pixel_values.to(self.visual.dtype), grid_thw=image_grid_thw)
        finally:
            handle.remove()
        received = self._received_attention(last_full.attn, captured, image_grid_thw)
        sizes = self.tokens_per_image(image_grid_thw)
        return list(zip(torch.split(out.pooler_output, sizes), torch.split(received, sizes))), out

    def score_block(self):
        """The block whose attention scores the merged tokens: the last full-attention one."""
        return self.visual.blocks[max(self.visual.fullatt_block_indexes)]

    def to_raster(self, per_merged: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """``[sum N]`` values in the tower's token order -> raster order (the tower runs in window order)."""
        window_index, _ = window_layout(self.visual, image_grid_thw)
        return per_merged[torch.argsort(window_index)]

    def _received_attention(self, attn, captured: dict, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """``[sum N]`` attention received per merged token (raster order), from one full-attention block."""

        hidden = captured["hidden"]
        length = hidden.shape[0]
        q, k, _ = attn.qkv(hidden).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = captured["rope"]
        q, k = transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.apply_rotary_pos_emb_vision(q, k, cos, sin)
        bounds = captured["cu_seqlens"].tolist()
        received = torch.zeros(length, dtype=torch.float32)
        for start, end in zip(bounds[:-1], bounds[1:]):
            qs, ks = q[start:end].transpose(0, 1).float(), k[start:end].transpose(0, 1).float()  # [H, n, d]
            weights = torch.softmax(qs @ ks.transpose(-1, -2) * attn.scaling, dim=-1)  # [H, n, n]
            received[start:end] = weights.mean(dim=(0, 1))
        unit = self.merge ** 2
        return self.to_raster(received.view(-1, unit).sum(-1), image_grid_thw)  # one entry per merged token

    @torch.no_grad()
    def reduce_images(self, pixel_values, prompts: list[str] | None, budget=None, features=None,
                      image_grid_thw: torch.Tensor | None = None):
        """Each image reduced for its prompt: ``ReductionOutput`` (batch 1) and ``[K_i, D_llm]`` rows.

        ``budget``: int (every image; must not exceed any image's N), one int per image, ``"auto"``
        or ``None`` (``config.budget``).
        """
        features = features if features is not None else self.vision_features(pixel_values, image_grid_thw)
        outputs = reduce_each(self.reducer, self.query_encoder, features, prompts, budget)
        rows = [out.tokens[0, :int(out.num_kept[0])] for out in outputs]
        return outputs, rows

    # positions ------------------------------------------------------------------------------
    def position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor,
                     keep_index: list[torch.Tensor]) -> torch.Tensor:
        """``[4, B, T]``: text positions (row 0) and M-RoPE (rows 1-3) of a sequence whose image runs
        hold only the kept tokens ``keep_index[i]`` (ascending indices into image i's full grid);
        ``config.positions == "sequential"``: the kept tokens at consecutive positions instead."""
        image_id = self.model.config.image_token_id
        positions = torch.zeros(4, *input_ids.shape, dtype=torch.long)
        image = 0
        for b in range(input_ids.shape[0]):
            valid = attention_mask[b].bool()
            ids = input_ids[b][valid]
            pieces, cursor, current = [], 0, 0
            for start, length in image_token_runs(ids, image_id):
                text = start - cursor
                pieces.append(torch.arange(text).expand(3, -1) + current)
                current += text
                grid = image_grid_thw[image]
                kept = keep_index[image]
                if len(kept) != length:
                    raise ParExportError(f"image {image}: {length} image tokens in input_ids for {len(kept)} kept tokens")
                if self.config.positions == "sequential":  # the ablation: as if the kept tokens were text
                    pieces.append(torch.arange(length).expand(3, -1) + current)
                    current += length
                else:
                    full = self.model.model.get_vision_position_ids(current, grid, 1, self.merge)  # [3, N]
                    pieces.append(full[:, kept])
                    current += int(max(grid[1], grid[2])) // self.merge
                cursor, image = start + length, image + 1
            pieces.append(torch.arange(len(ids) - cursor).expand(3, -1) + current)
            positions[1:, b, valid] = torch.cat(pieces, dim=1)
            positions[0, b, valid] = torch.arange(int(valid.sum()))
        return positions

    # generation -----------------------------------------------------------------------------
    def prepare_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, prompts: list[str] | None = None,
                       budget=None, features=None) -> ReducedQwenBatch:
        """Reduce the images, shrink each image run to its K tokens and compute the positions.

        Args:
            input_ids: ``[B, T]`` as the processor gives them (``<|image_pad|>`` expanded to N per image).
            pixel_values: ``[sum patches, C * 2 * 14 * 14]``; image_grid_thw: ``[I, 3]``.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if bool((input_ids == self.model.config.video_token_id).any()):
            raise ParExportError("video input is not supported yet: PAR reduces images (no <|video_pad|> tokens)")
        image_id = self.model.config.image_token_id
        runs = [(b, length) for b in range(input_ids.shape[0])
                for _, length in image_token_runs(input_ids[b][attention_mask[b].bool()], image_id)]
        sizes = self.tokens_per_image(image_grid_thw)
        if [length for _, length in runs] != sizes:
            raise ParExportError(f"image token runs {[length for _, length in runs]} do not match the images' merged "
                             f"token counts {sizes} (expand <|image_pad|> as the processor does)")
        if prompts is None:
            prompts = [self.tokenizer.decode(ids[m.bool() & (ids != image_id)].tolist(), skip_special_tokens=True)
                       for ids, m in zip(input_ids, attention_mask)]
        image_prompts = [prompts[b] for b, _ in runs]
        outputs, rows = self.reduce_images(pixel_values, image_prompts, budget, features, image_grid_thw)
        keep = [out.keep_index[0, :int(out.num_kept[0])] for out in outputs]
        model_inputs = self.inputs_from_rows(input_ids, attention_mask, image_grid_thw, rows, keep)
        return ReducedQwenBatch(model_inputs, outputs, rows, image_prompts)

    def inputs_from_rows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor,
                         rows: list[torch.Tensor], keep: list[torch.Tensor]) -> dict:
        """``generate`` inputs for reduced rows made elsewhere (an exported graph): each image's run of
        image tokens shrunk to its ``rows[i] [K_i, D]``, positions from ``keep[i] [K_i]`` (merged-grid
        indices), left padded."""
        pad = self.tokenizer.pad_token_id if self.tokenizer is not None and self.tokenizer.pad_token_id is not None else 0
        new_ids, new_mask = resize_image_runs(input_ids, attention_mask, self.model.config.image_token_id, None,
                                              [len(k) for k in keep], pad)
        return {
            "input_ids": new_ids,
            "attention_mask": new_mask,
            "position_ids": self.position_ids(new_ids, new_mask, image_grid_thw, [torch.as_tensor(k) for k in keep]),
            "mm_encoder_outputs": {"image": self.image_outputs(rows)},
        }

    def image_outputs(self, rows: list[torch.Tensor]):
        """What the model's ``mm_encoder_outputs["image"]`` holds for the per-image ``rows [K_i, D]``."""
        return BaseModelOutputWithPooling(pooler_output=list(rows))

    @torch.no_grad()
    def full_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                    image_grid_thw: torch.Tensor) -> dict:
        """The stock (unreduced) context in the form :meth:`inputs_from_rows` gives: every merged
        token of every image at its stock position (equal to ``get_rope_index``'s, tested), for an
        LLM runtime that takes embeddings and positions."""
        rows = self.model.model.get_image_features(pixel_values, image_grid_thw).pooler_output
        keep = [torch.arange(n) for n in self.tokens_per_image(image_grid_thw)]
        return self.inputs_from_rows(input_ids, attention_mask, image_grid_thw, list(rows), keep)

    @torch.no_grad()
    def prompt_embeds(self, model_inputs: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``inputs_embeds [B, T, D]`` float32, ``attention_mask [B, T]`` and M-RoPE ``position_ids
        [3, B, T]`` of :meth:`inputs_from_rows`'s inputs: what an exported LLM
        (:mod:`par_export.runtime.llm_onnx`) takes."""
        ids = model_inputs["input_ids"]
        embeds = self.model.get_input_embeddings()(ids)
        rows = model_inputs["mm_encoder_outputs"]["image"].pooler_output
        embeds[ids == self.model.config.image_token_id] = torch.cat(list(rows)).to(embeds.dtype)
        return (embeds.float().numpy(), model_inputs["attention_mask"].numpy(),
                model_inputs["position_ids"][1:].numpy())

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values, image_grid_thw, prompts=None, budget=None,
                 **generate_kwargs) -> torch.Tensor:
        """``model.generate`` on the reduced context; the new tokens only ``[B, new]``."""
        batch = self.prepare_inputs(input_ids, attention_mask, pixel_values, image_grid_thw, prompts, budget)
        self.model.model.rope_deltas = None  # positions come from position_ids, not a previous call
        out = self.model.generate(**batch.model_inputs, **generate_kwargs)
        return out[:, batch.model_inputs["input_ids"].shape[1]:]


def window_layout(visual, image_grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``window_index [S / 4]`` (merged-token order of windowed attention) and the window
    boundaries ``cu_window_seqlens`` (patches, in that order), by transformers' own helper.
    ``visual``: anything with ``spatial_merge_size``, ``window_size`` and ``patch_size``."""

    return get_vision_window_index(image_grid_thw, spatial_merge_size=visual.spatial_merge_size,
                                   window_size=visual.window_size, patch_size=visual.patch_size, kwargs={})


def rotary_angles(vision_position_ids: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """``[S, 2]`` (h, w) patch positions -> rotary angles ``[S, head_dim / 2]``, the h and w halves
    side by side, as the tower's rotary embedding makes them (Edge-LLM's ``rotary_pos_emb``)."""
    return (vision_position_ids.unsqueeze(-1).float() * inv_freq).flatten(1)


def vision_inputs(visual, image_grid_thw: torch.Tensor) -> dict[str, torch.Tensor]:
    """Host-side index inputs of the exported tower for the images of ``image_grid_thw [I, 3]``, from
    transformers' own helpers (the exported graph has no Python loops over the grids); S counts the
    patches of all images:

    - ``vision_position_ids [S, 2]``: (h, w) of each patch for the 2D rotary embedding;
    - ``window_index [S / 4]``: merged-token order of windowed attention;
    - ``window_ids [S]``: the window of each patch in that order (windowed blocks attend within one);
    - ``cu_seqlens [I + 1]``: the images' patch boundaries (full-attention blocks attend within one
      image; image i's merged tokens are ``cu_seqlens[i] / 4 .. cu_seqlens[i + 1] / 4``).
    """

    positions = get_vision_position_ids(image_grid_thw, visual.spatial_merge_size)
    window_index, cu_window = window_layout(visual, image_grid_thw)
    patches = int(positions.shape[0])
    window_ids = torch.bucketize(torch.arange(patches), cu_window[1:].long(), right=True)
    return {"vision_position_ids": positions.long(), "window_index": window_index.long(), "window_ids": window_ids,
            "cu_seqlens": image_bounds(image_grid_thw)}


def image_bounds(image_grid_thw: torch.Tensor) -> torch.Tensor:
    """``cu_seqlens [I + 1]`` int64: the patch boundaries of the images of ``image_grid_thw [I, 3]``."""
    return torch.nn.functional.pad(image_grid_thw.long().prod(-1).cumsum(0), (1, 0))


def segment_ids(length: int | torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    """``[length]`` int64: which segment each position is in, for boundaries ``bounds [G + 1]``
    (``0, ..., length``, as ``cu_seqlens``)."""
    position = torch.arange(length, device=bounds.device).unsqueeze(1)
    return (position >= bounds[1:].long().unsqueeze(0)).sum(-1)


def per_image(tokens: torch.Tensor, received: torch.Tensor, token_bounds: torch.Tensor):
    """The merged tokens of all images ``[T, D]`` (and ``received [T]``) as a padded batch, one image
    per row: ``[I, M, D]``, ``[I, M]`` and the ``token_mask [I, M]``, M the most tokens of an image.
    ``token_bounds [I + 1]``: the images' merged-token boundaries. Padded rows repeat the image's
    first token (the reducers ignore them)."""
    starts = token_bounds[:-1].long()
    counts = token_bounds[1:].long() - starts
    slots = torch.arange(counts.max(), device=tokens.device)  # [M]; ONNX Range with a computed limit
    mask = slots.unsqueeze(0) < counts.unsqueeze(1)  # [I, M]
    index = starts.unsqueeze(1) + torch.where(mask, slots.unsqueeze(0), torch.zeros_like(slots).unsqueeze(0))
    return tokens[index], received[index], mask


def masked_vision_attention(attn, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One vision attention layer with a boolean ``[S, S]`` mask (query, key): the output ``[S, C]``
    and the attention each patch receives, averaged over heads and over the queries that may attend
    to it ``[S]`` (for an image mask: the queries of its image, as if the image were alone).

    Written out (not the stock per-window loop over ``cu_seqlens``) so the exported graph takes any
    grid: the windows come in as ``window_ids`` and become a mask."""

    length = hidden.shape[0]
    q, k, v = attn.qkv(hidden).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # [H, S, d]
    scores = (q @ k.transpose(-1, -2)) * attn.scaling
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    out = (weights @ v).transpose(0, 1).reshape(length, -1)
    queries = mask.sum(dim=0).to(torch.float32)  # [S]: how many queries see each key
    return attn.proj(out), weights.float().mean(dim=0).sum(dim=0) / queries


class QwenVisionParGraph(VisionParGraph):
    """``vision_par.onnx`` for Qwen2.5-VL images, one or several per call (each its own size): tower
    (windowed and full attention, 2D rotary, patch merger) -> reducer on each image's merged tokens.

    Inputs: ``pixel_values [S, 3 * 2 * P * P]`` (the processor's flattened patches of all images),
    ``vision_position_ids [S, 2]``, ``window_index [S / 4]``, ``window_ids [S]``, ``cu_seqlens [I + 1]``
    (from :func:`vision_inputs`), ``query_embeds [I, D]`` (LLM space, one per image) and ``budget``.
    Outputs: ``image_embeds [I, W, D]``, ``num_kept [I]``, ``keep_index [I, W]`` (into image i's
    N_i = S_i / 4 merged tokens, raster order): the rows take the M-RoPE positions of their indices.

    Attention is computed with masks over all S patches (``[heads, S, S]``), so memory grows with
    the square of the patches in one call, not per image as in the stock per-window loop.
    """

    def merged_tokens(self, pixel_values, vision_position_ids, window_index, window_ids, cu_seqlens):
        """Merged tokens ``[sum N, D]`` in raster order (image after image) and the attention they
        receive ``[sum N]``."""
        visual = self.vision_tower
        angles = rotary_angles(vision_position_ids, visual.rotary_pos_emb.inv_freq)
        order = torch.arange(window_index.shape[0], device=window_index.device)
        reverse = torch.zeros_like(window_index).scatter(0, window_index, order)  # ONNX has no argsort
        window_mask = window_ids.unsqueeze(0) == window_ids.unsqueeze(1)
        image_ids = segment_ids(pixel_values.shape[0], cu_seqlens)  # window order keeps images apart
        return self.tower(pixel_values, angles, window_index, reverse, window_mask,
                          image_ids.unsqueeze(0) == image_ids.unsqueeze(1))

    def reduce_images(self, tokens, received, cu_seqlens, query_embeds, budget):
        """Each image's merged tokens (``cu_seqlens`` bounds its patches) reduced for its query."""
        padded, attn, mask = per_image(tokens, received, cu_seqlens // self.vision_tower.spatial_merge_unit)
        return self.reduce_and_project(padded, attn, query_embeds, budget, mask)

    def tower(self, pixel_values, angles, window_index, reverse_index, window_mask, image_mask):
        """The vision tower on patches ``[S, C * T * P * P]`` with rotary ``angles [S, head_dim / 2]``
        (both in patch order), windows as ``window_mask [S, S]`` and images as ``image_mask [S, S]``
        in window order; merged tokens ``[N, D]`` back in raster order
        (``reverse_index``) and the attention each receives in the last full-attention block ``[N]``."""
        visual = self.vision_tower
        unit = visual.spatial_merge_unit

        def window_order(values):
            return values.reshape(-1, unit, values.shape[-1]).index_select(0, window_index).reshape(
                values.shape[0], values.shape[-1])

        hidden = window_order(visual.patch_embed(pixel_values))
        angles = window_order(angles)
        both = torch.cat((angles, angles), dim=-1)
        cos, sin = both.cos(), both.sin()
        last_full = max(visual.fullatt_block_indexes)
        received = None
        for number, block in enumerate(visual.blocks):
            mask = image_mask if number in visual.fullatt_block_indexes else window_mask
            out, weights = masked_vision_attention(block.attn, block.norm1(hidden), cos, sin, mask)
            if number == last_full:
                received = weights
            hidden = hidden + out
            hidden = hidden + block.mlp(block.norm2(hidden))
        merged = visual.merger(hidden)
        received = received.reshape(-1, unit).sum(-1)
        return merged.index_select(0, reverse_index), received.index_select(0, reverse_index)

    def forward(self, pixel_values, vision_position_ids, window_index, window_ids, cu_seqlens, query_embeds,
                budget=None):
        tokens, received = self.merged_tokens(pixel_values, vision_position_ids, window_index, window_ids, cu_seqlens)
        return self.reduce_images(tokens, received, cu_seqlens, query_embeds, budget)


@dataclass(frozen=True)
class Qwen2_5_VLOnnxConfig(VisionParOnnxConfig):
    """Qwen2.5-VL's export: one or several images per call, each any size the processor gives (S
    patches in all, N_i = S_i / 4 merged tokens per image, all dynamic). The graph's width is
    ``min(k_max, N)`` for the smallest N it serves, recorded as ``tokens_per_image``; ``run``
    refuses a smaller image with that bound."""

    dynamic_tokens = True
    validation_batches = (1, 2)  # images per call; the cases spread the grids over both

    @property
    def vision_par(self) -> GraphSpec:
        inputs = ("pixel_values", "vision_position_ids", "window_index", "window_ids", "cu_seqlens", "query_embeds")
        inputs += ("budget",) if self.budget_input else ()
        images = {0: "images"}
        return GraphSpec(name="vision_par", inputs=inputs, outputs=("image_embeds", "num_kept", "keep_index"),
                         dynamic_axes={"pixel_values": {0: "patches"}, "vision_position_ids": {0: "patches"},
                                       "window_index": {0: "tokens"}, "window_ids": {0: "patches"},
                                       "cu_seqlens": {0: "images_p1"}, "query_embeds": images,
                                       "image_embeds": images, "num_kept": images, "keep_index": images})

    def vision_module(self, qwen, budget) -> nn.Module:
        return QwenVisionParGraph(qwen, budget)

    def min_tokens(self, qwen) -> int:
        """The graph serves images with at least ``k_max`` merged tokens (its full width)."""
        return qwen.config.k_max

    def extra_metadata(self, qwen) -> dict:
        visual = qwen.visual
        return {"patch_size": visual.patch_size, "spatial_merge_size": visual.spatial_merge_size,
                "window_size": visual.window_size, "temporal_patch_size": qwen.model.config.vision_config.temporal_patch_size}

    def shape_bounds(self, max_sequence: int, geometry: dict | None = None) -> dict:
        """TensorRT profile bounds: patches from one smallest image to the processor's ``max_pixels``
        (16384 merged tokens) in all, up to ``batch_max`` images per call."""
        bounds = super().shape_bounds(max_sequence)
        del bounds["pixel_values"]
        tokens = [geometry["tokens_per_image"], 16384]
        patches = {"0": [4 * tokens[0], 4 * tokens[1]]}
        bounds.update({"pixel_values": patches, "vision_position_ids": patches, "window_ids": patches,
                       "window_index": {"0": tokens}, "cu_seqlens": {"0": [2, self.batch_max + 1]}})
        return bounds

    @staticmethod
    def _visual_like(geometry: dict):
        return SimpleNamespace(spatial_merge_size=geometry["spatial_merge_size"], window_size=geometry["window_size"],
                               patch_size=geometry["patch_size"])

    def _case_feed(self, geometry: dict, grids_hw: list[tuple[int, int]], rng, dtype) -> dict:
        """Random patches for images of the patch grids ``grids_hw`` in one call."""
        patch = geometry["patch_size"]
        width = 3 * geometry["temporal_patch_size"] * patch * patch
        grid = torch.tensor([[1, h, w] for h, w in grids_hw])
        feed = {k: v.numpy() for k, v in vision_inputs(self._visual_like(geometry), grid).items()}
        feed["pixel_values"] = rng.standard_normal((int(grid.prod(-1).sum()), width)).astype(dtype)
        return feed

    @staticmethod
    def validation_grids(min_tokens: int) -> list[tuple[int, int]]:
        """Patch grids (h, w) of several shapes, each with at least ``min_tokens`` merged tokens:
        square, wide, tall and a slightly larger one (memory grows as patches^2 per head)."""
        side = 2 * math.ceil(math.sqrt(min_tokens))  # even: whole 2x2 merge blocks
        return [(side, side), (side, 2 * side + 4), (2 * side + 6, side), (side + 4, side + 8)]

    @staticmethod
    def pair_grids(min_tokens: int) -> list[tuple[int, int]]:
        """Two images of different shapes for one call (tall, then square), small: attention memory
        grows with the square of the patches of the whole call."""
        side = 2 * math.ceil(math.sqrt(min_tokens))
        return [(side + 2, side), (side, side)]

    def dummy_inputs(self, qwen, query_dim: int) -> tuple[torch.Tensor, ...]:
        """Two images of different shapes, so that no size of either is traced as a constant."""
        geometry = self.extra_metadata(qwen)
        feed = self._case_feed(geometry, self.pair_grids(self.min_tokens(qwen)), np.random.default_rng(0), np.float32)
        dummy = tuple(torch.from_numpy(feed[name]) for name in self.vision_par.inputs[:5])
        dummy += (torch.randn(2, query_dim),)
        if self.budget_input:
            dummy += (torch.tensor(4, dtype=torch.int64),)
        return dummy

    def vision_cases(self, geometry: dict, query_dim: int, budgets: list, seed: int = 0) -> list[Case]:
        """Square, wide, tall and larger grids one per call, then two images of different shapes in
        one call, the budgets spread over them (the tower is what the grid changes; a 32-block tower
        at real size is costly); one image without a query (attention fallback)."""
        rng = np.random.default_rng(seed)
        dtype = np.float16 if self.fp16 else np.float32
        grids = self.validation_grids(geometry["tokens_per_image"])
        calls = [[grid] for grid in grids] + [self.pair_grids(geometry["tokens_per_image"])]
        cases = []
        for i in range(max(len(calls), len(budgets))):
            call, budget = calls[i % len(calls)], budgets[i % len(budgets)]
            feed = self._case_feed(geometry, call, rng, dtype)
            query = rng.standard_normal((len(call), query_dim)).astype(dtype)
            query[-1] *= i not in (1, len(calls) - 1)  # no prompt: a wide image alone, the last of a pair
            feed["query_embeds"] = query
            name = " + ".join(f"grid={h}x{w} N={h * w // 4}" for h, w in call)
            cases.append(self.case(name, feed, budget))
        return cases


FAMILY = ModelFamily(
    name="qwen2_5_vl",
    description="Qwen2.5-VL: Qwen2_5_VLForConditionalGeneration, dynamic resolution, M-RoPE",
    adapter=ReducedQwen2_5_VL,
    onnx_config=Qwen2_5_VLOnnxConfig,
    image_token="<|image_pad|>",
    fallback_template=FALLBACK_TEMPLATE,
    places_rows=True,
    onnx_llm=True,
)
