"""The LLaVA-1.5 family: PAR (or any registered reducer) inside transformers'
``LlavaForConditionalGeneration``, its ONNX export config and its prompt format.

The model is not forked: the adapter computes the reduced image features itself,
shrinks each image's run of ``<image>`` tokens in ``input_ids`` to its K, and hands
both to the model through ``mm_encoder_outputs``, the pre-encoded-features input
of transformers' ``generate``/``forward``::

    llava = ReducedLlava.from_pretrained("path/to/llava", method="par", clip_path="path/to/clip")
    batch = llava.prepare_inputs(input_ids, attention_mask, pixel_values, budget="auto")
    out = llava.model.generate(**batch.model_inputs, max_new_tokens=16)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers.modeling_outputs import BaseModelOutputWithPooling

from par_export.errors import ParExportError
from par_export.models.clip_vision import cls_attention, hidden_state_index, layer_keys
from par_export.models.family import ModelFamily
from par_export.models.graphs import VisionParGraph
from par_export.models.loading import load_pretrained_model, pretrained_kwargs
from par_export.models.onnx_config import Case, VisionParOnnxConfig
from par_export.models.query import ClipQueryEncoder, LlmQueryEncoder, QueryEncoder
from par_export.reduce import PARConfig, ReductionOutput, TokenReducer, create_reducer

# LLaVA-1.5's chat template (as llava-hf checkpoints ship it): "USER: <image>\n{text} ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Only for a tokenizer without a chat template (a warning says so).
FALLBACK_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


@dataclass
class ReducedBatch:
    """Inputs for ``model.generate(**model_inputs)`` / ``model(**model_inputs)``, and what was kept.

    Attributes:
        model_inputs: ``input_ids [B, T']`` and ``attention_mask [B, T']`` (left padded,
            K_i image tokens per image) and ``mm_encoder_outputs``.
        reduction: the reducer's output for all images ``[num_images, ...]``.
        image_features: per image ``[K_i, D_llm]`` projected tokens.
        prompts: the prompt text each image's query was built from.
    """

    model_inputs: dict
    reduction: ReductionOutput
    image_features: list[torch.Tensor]
    prompts: list[str]


def left_pad(rows: list[list[int]] | list[torch.Tensor], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows -> ``input_ids`` and ``attention_mask`` ``[B, max length]``, left padded."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, length - len(row):] = torch.as_tensor(row, dtype=torch.long)
        mask[b, length - len(row):] = 1
    return ids, mask


def image_token_runs(ids: torch.Tensor, image_token_id: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each contiguous run of ``image_token_id`` in a 1-D ``ids``."""
    is_image = (ids == image_token_id).to(torch.int8)
    edges = torch.diff(is_image, prepend=is_image.new_zeros(1), append=is_image.new_zeros(1))
    starts = (edges == 1).nonzero().flatten().tolist()
    ends = (edges == -1).nonzero().flatten().tolist()
    return [(s, e - s) for s, e in zip(starts, ends)]


def resize_image_runs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_token_id: int,
    tokens_per_image: int | None,
    kept_per_image: list[int],
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each run of ``tokens_per_image`` image tokens by ``kept_per_image[i]`` of them.

    Args:
        input_ids, attention_mask: ``[B, T]`` (padding on either side).
        tokens_per_image: the run length every image must have, or ``None`` when it differs per
            image (LLaVA-NeXT's anyres).
        kept_per_image: K of each image, in the order images appear (row-major).
    Returns:
        new ``input_ids`` and ``attention_mask`` ``[B, T']``, left padded.
    """
    rows = []
    image = 0
    for b in range(input_ids.shape[0]):
        ids = input_ids[b][attention_mask[b].bool()]
        pieces, cursor = [], 0
        for start, length in image_token_runs(ids, image_token_id):
            if tokens_per_image is not None and length != tokens_per_image:
                raise ParExportError(
                    f"sample {b}: a run of {length} image tokens, expected {tokens_per_image} per image "
                    "(expand each <image> placeholder to the vision tower's patch count, as LlavaProcessor does)"
                )
            if image >= len(kept_per_image):
                raise ParExportError(f"input_ids hold more image placeholders than the {len(kept_per_image)} images given")
            pieces += [ids[cursor:start], ids.new_full((kept_per_image[image],), image_token_id)]
            cursor = start + length
            image += 1
        pieces.append(ids[cursor:])
        rows.append(torch.cat(pieces))
    if image != len(kept_per_image):
        raise ParExportError(f"{len(kept_per_image)} images were given but input_ids hold {image} image placeholders")
    new_ids, new_mask = left_pad(rows, pad_token_id)
    return new_ids.to(input_ids.dtype), new_mask.to(attention_mask.dtype)


class ReducedLlava:
    """A ``LlavaForConditionalGeneration`` whose image features go through a token reducer.

    Args:
        model: the LLaVA model (CLIP vision tower, ``vision_feature_select_strategy="default"``).
        method: a registered reducer name or a :class:`TokenReducer` instance.
        config: PAR options; ``config.space`` picks where tokens are reduced: ``"clip"``
            reduces the tower's tokens (retrieval in CLIP's joint space) and projects the K
            kept; ``"llm"`` projects all N once, as the unreduced model does, and reduces the
            projector's output (:meth:`to_reducer_space`).
        tokenizer: the LLaVA tokenizer: decodes prompts from ``input_ids`` and, for
            ``space=llm``, tokenizes the query.
        clip: a :class:`ClipQueryEncoder` for ``space=clip``. Without one the adapter
            falls back to ``space=llm`` with a warning.
    """

    model_class = "LlavaForConditionalGeneration"  # transformers class that loads the checkpoint
    model_types = ("llava",)  # config.json model_type values it serves

    def __init__(self, model, method: str | TokenReducer = "par", config: PARConfig | None = None,
                 tokenizer=None, clip: ClipQueryEncoder | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        config = config if config is not None else PARConfig()
        if config.space == "clip" and clip is None:
            warnings.warn("space=clip needs a CLIP checkpoint (clip_path); falling back to space=llm", stacklevel=2)
            config = config.replace(space="llm")
        self.config = config
        inner = model.model
        self.vision_tower = inner.vision_tower
        self.projector = inner.multi_modal_projector
        self.query_encoder: QueryEncoder | None = None
        if config.space == "clip":
            self.query_encoder = clip
        elif tokenizer is not None:
            self.query_encoder = LlmQueryEncoder(
                inner.get_input_embeddings(), tokenizer,
                max_length=model.config.text_config.max_position_embeddings,
                rewrite=config.rewrite, template=config.template,
            )
        if isinstance(method, TokenReducer):
            self.reducer = method
        else:
            projection = None if self.query_encoder is None else self.query_encoder.visual_projection
            self.reducer = create_reducer(method, config=config, query_projection=projection)
        self._check_model()

    @classmethod
    def from_pretrained(cls, path: str | Path, method: str = "par", config: PARConfig | None = None,
                        clip_path: str | Path | None = None, dtype: torch.dtype | None = None) -> ReducedLlava:
        """Load a local checkpoint folder of this family (and optionally a CLIP folder for ``space=clip``)."""

        model = load_pretrained_model(path, cls.model_types, cls.model_class, dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, **pretrained_kwargs())
        config = config if config is not None else PARConfig()
        clip = None
        if clip_path is not None:
            clip = ClipQueryEncoder.from_pretrained(clip_path, config.rewrite, config.template, dtype=dtype)
        return cls(model, method, config, tokenizer, clip)

    def _check_model(self) -> None:
        cfg = self.model.config
        if not isinstance(cfg.vision_feature_layer, int):
            raise ParExportError(f"vision_feature_layer {cfg.vision_feature_layer!r}: only a single layer is supported")
        if cfg.vision_feature_select_strategy != "default":
            raise ParExportError(
                f"vision_feature_select_strategy {cfg.vision_feature_select_strategy!r}: only 'default' "
                "(CLS removed) is supported"
            )
        if getattr(cfg.vision_config, "model_type", None) != "clip_vision_model":
            raise ParExportError(f"vision tower {cfg.vision_config.model_type!r}: only CLIP vision towers are supported")

    @property
    def tokens_per_image(self) -> int:
        vision = self.model.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    @torch.no_grad()
    def vision_features(self, pixel_values: torch.Tensor, tower_outputs: bool = False) -> tuple:
        """``pixel_values [I, 3, H, W]`` -> patch tokens ``[I, N, Dv]`` of the feature layer
        and the CLS attention ``[I, N]`` of that layer; with ``tower_outputs``, a third item: what
        the authors' forms of the baselines also read (``cls_token [I, Dv]`` of the feature
        layer, ``keys [I, 1 + N, head_dim]`` of the layer that produced it, averaged over heads;
        ``next_queries``, ``next_keys`` ``[I, 1 + N, Dv]``: the q/k projections of the layer after
        it on the feature layer, where there is one)."""
        tower = self.vision_tower
        dtype = next(tower.parameters()).dtype
        hidden = tower(pixel_values.to(dtype), output_hidden_states=True).hidden_states
        index = hidden_state_index(self.model.config.vision_feature_layer, len(hidden) - 1)
        layer = tower.encoder.layers[index - 1]
        attn = cls_attention(layer, hidden[index - 1])
        if not tower_outputs:
            return hidden[index][:, 1:], attn
        extras = {"cls_token": hidden[index][:, 0], "keys": layer_keys(layer, hidden[index - 1])}
        if index < len(tower.encoder.layers):
            after = tower.encoder.layers[index]
            normed = after.layer_norm1(hidden[index])
            extras.update(next_queries=after.self_attn.q_proj(normed), next_keys=after.self_attn.k_proj(normed))
        return hidden[index][:, 1:], attn, extras

    @property
    def reduces_projected(self) -> bool:
        """``space=llm``: the reducer sees the projector's output (the authors' forms of the
        baselines always reduce the tower's tokens, as their code does)."""
        return self.config.space == "llm" and not self.reducer.tower_inputs

    @property
    def clusters_tower_tokens(self) -> bool:
        """``space=llm`` with a reducer that takes ``cluster_tokens``: its similarities come from the
        tower's tokens (``Dv`` wide), the rows it merges are the projector's (``D_llm``): the same
        tokens, a quarter of the N x N cost at LLaVA-1.5's 1024 / 4096."""
        return self.reduces_projected and self.reducer.accepts_cluster_tokens

    def cluster_tokens(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """What the reducer clusters on for tower tokens ``[..., N, Dv]``: themselves
        (:attr:`clusters_tower_tokens`), or ``None`` (the tokens it reduces)."""
        return tokens if self.clusters_tower_tokens else None

    def to_reducer_space(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tower tokens ``[..., N, Dv]`` -> what the reducer sees: themselves (``space=clip``), or the
        projector's output ``[..., N, D_llm]`` (``space=llm``: retrieval, clustering and merging all
        act on the rows the LLM receives, and no token is projected twice)."""
        return self.projector(tokens) if self.reduces_projected else tokens

    def to_llm_space(self, reduced: torch.Tensor) -> torch.Tensor:
        """The reducer's output tokens -> LLM rows ``[..., K, D_llm]`` (projected unless already, ``space=llm``)."""
        return reduced if self.reduces_projected else self.projector(reduced)

    def prompts_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """Decode each sample's text tokens (image and special tokens removed)."""
        if self.tokenizer is None:
            raise ParExportError("pass prompts=[...] or build ReducedLlava with the model's tokenizer")
        image_id = self.model.config.image_token_id
        texts = []
        for ids, mask in zip(input_ids, attention_mask):
            ids = ids[mask.bool() & (ids != image_id)]
            texts.append(self.tokenizer.decode(ids.tolist(), skip_special_tokens=True))
        return texts

    @torch.no_grad()
    def reduce_images(self, pixel_values: torch.Tensor, prompts: list[str] | None,
                      budget: int | str | None = None,
                      features: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[ReductionOutput, list[torch.Tensor]]:
        """Reduce each image for its prompt: the reducer's output and ``[K_i, D_llm]`` per image.

        ``features``: ``vision_features(pixel_values)`` if already computed (evaluation reuses
        one tower pass across reducers and budgets).
        """
        wants_tower = bool(self.reducer.tower_inputs)
        if features is None or (wants_tower and len(features) < 3):
            features = self.vision_features(pixel_values, tower_outputs=wants_tower)
        tokens, attn, *tower = features
        cluster = self.cluster_tokens(tokens)
        tokens = self.to_reducer_space(tokens)
        prompt_embedding = prompt_mask = None
        if self.reducer.uses_prompt and prompts is not None:
            if self.query_encoder is None:
                warnings.warn("no tokenizer to embed the prompts: relevance falls back to CLS attention", stacklevel=2)
            else:
                prompt_embedding, prompt_mask = self.query_encoder(prompts)
        reduction = self.reducer(tokens, prompt_embedding, attn, budget=budget, prompt_mask=prompt_mask,
                                 tower=tower[0] if tower else None, cluster_tokens=cluster)
        projected = self.to_llm_space(reduction.tokens)
        features = [p[:k] for p, k in zip(projected, reduction.num_kept.tolist())]
        return reduction, features

    def prepare_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                       pixel_values: torch.Tensor, prompts: list[str] | None = None,
                       budget: int | str | None = None,
                       features: tuple[torch.Tensor, torch.Tensor] | None = None) -> ReducedBatch:
        """Reduce the images and rewrite ``input_ids``/``attention_mask`` to K image tokens each.

        Args:
            input_ids: ``[B, T]`` with ``tokens_per_image`` image tokens per image.
            attention_mask: ``[B, T]`` or ``None`` (no padding).
            pixel_values: ``[I, 3, H, W]``, images in the order their placeholders appear.
            prompts: one text per sample for the query; default: decoded from ``input_ids``.
            budget: int K, ``"auto"``, or ``None`` for ``config.budget``.
            features: precomputed ``vision_features(pixel_values)``.
        """
        attention_mask, image_prompts = self._image_prompts(input_ids, attention_mask, pixel_values, prompts)
        reduction, image_features = self.reduce_images(pixel_values, image_prompts, budget, features)
        return self._reduced_batch(input_ids, attention_mask, reduction, image_features, image_prompts)

    def _image_prompts(self, input_ids, attention_mask, pixel_values, prompts):
        """The attention mask (all ones if ``None``) and the prompt of each image, in image order."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if prompts is None:
            prompts = self.prompts_from_ids(input_ids, attention_mask)
        if len(prompts) != input_ids.shape[0]:
            raise ParExportError(f"{len(prompts)} prompts for a batch of {input_ids.shape[0]} samples")
        image_rows = [b for b in range(input_ids.shape[0]) for _ in
                      image_token_runs(input_ids[b][attention_mask[b].bool()], self.model.config.image_token_id)]
        self._check_image_count(pixel_values, len(image_rows))
        return attention_mask, [prompts[b] for b in image_rows]

    def _check_image_count(self, pixel_values: torch.Tensor, placeholders: int) -> None:
        """One image of ``pixel_values`` per image placeholder of ``input_ids``."""
        if placeholders != pixel_values.shape[0]:
            raise ParExportError(
                f"{pixel_values.shape[0]} images were given but input_ids hold {placeholders} image placeholders"
            )

    def _reduced_batch(self, input_ids, attention_mask, reduction, image_features, image_prompts) -> ReducedBatch:
        """Each image's run of image tokens shrunk to its rows, and the ``generate`` inputs."""
        new_ids, new_mask = resize_image_runs(
            input_ids, attention_mask, self.model.config.image_token_id, self.run_length,
            [f.shape[0] for f in image_features], self._pad_token_id(),
        )
        device = self.model.device
        model_inputs = {
            "input_ids": new_ids.to(device),
            "attention_mask": new_mask.to(device),
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=image_features)},
        }
        return ReducedBatch(model_inputs, reduction, image_features, image_prompts)

    @property
    def run_length(self) -> int | None:
        """Image tokens per image in the processor's ``input_ids`` (``None``: differs per image)."""
        return self.tokens_per_image

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pixel_values: torch.Tensor,
                 prompts: list[str] | None = None, budget: int | str | None = None, **generate_kwargs) -> torch.Tensor:
        """``model.generate`` on the reduced context; returns the new tokens only ``[B, new]``."""
        batch = self.prepare_inputs(input_ids, attention_mask, pixel_values, prompts, budget)
        out = self.model.generate(**batch.model_inputs, **generate_kwargs)
        return out[:, batch.model_inputs["input_ids"].shape[1] :]

    def _pad_token_id(self) -> int:
        for source in (self.tokenizer, self.model.generation_config, self.model.config.text_config):
            pad = getattr(source, "pad_token_id", None)
            if pad is not None:
                return int(pad)
        return 0  # any id: padded positions are masked out


@dataclass(frozen=True)
class LlavaOnnxConfig(VisionParOnnxConfig):
    """LLaVA-1.5's export: fixed-size ``pixel_values [B, 3, S, S]`` (S = the tower's ``image_size``),
    a query row per image, and validation feeds for every batch size and budget."""

    def vision_module(self, llava: ReducedLlava, budget) -> torch.nn.Module:
        """The traced module: tower -> reducer -> projector (:class:`VisionParGraph`)."""
        return VisionParGraph(llava, budget)

    def min_tokens(self, llava: ReducedLlava) -> int:
        """Tokens per image (the same for every image)."""
        return llava.tokens_per_image

    def extra_metadata(self, llava: ReducedLlava) -> dict:
        return {}

    def dummy_inputs(self, llava: ReducedLlava, query_dim: int) -> tuple[torch.Tensor, ...]:
        """Trace inputs of ``vision_par``: batch 2 (so the batch axis stays symbolic)."""
        size = llava.model.config.vision_config.image_size
        dummy = (torch.randn(2, 3, size, size), torch.randn(2, query_dim))
        if self.budget_input:
            dummy += (torch.tensor(min(16, llava.tokens_per_image), dtype=torch.int64),)
        return dummy

    def vision_cases(self, geometry: dict, query_dim: int, budgets: list, seed: int = 0) -> list[Case]:
        """Parity feeds for every batch size and budget (a zero query row tests the no-prompt fallback).

        ``geometry``: the export metadata (``image_size``), so ``verify`` can rebuild the feeds
        from an artifact alone."""
        rng = np.random.default_rng(seed)
        dtype = np.float16 if self.fp16 else np.float32
        size = geometry["image_size"]
        cases = []
        for batch in [b for b in self.validation_batches if b <= self.batch_max]:
            for budget in budgets:
                pixels = rng.standard_normal((batch, 3, size, size)).astype(dtype)
                query = rng.standard_normal((batch, query_dim)).astype(dtype)
                if batch > 1:
                    query[-1] = 0
                feed = {"pixel_values": pixels, "query_embeds": query}
                cases.append(self.case(f"batch={batch}", feed, budget))
        return cases


FAMILY = ModelFamily(
    name="llava",
    description="LLaVA-1.5: LlavaForConditionalGeneration with a CLIP vision tower",
    adapter=ReducedLlava,
    onnx_config=LlavaOnnxConfig,
    image_token="<image>",
    fallback_template=FALLBACK_TEMPLATE,
    pipeline=True,
)
