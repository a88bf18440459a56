"""Published model geometries as transformers configs (no weights): for FLOPs and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from par_export.errors import ParExportError
from par_export.models.llava import CHAT_TEMPLATE
from par_export.models.tiny import (
    SPECIAL,
    llava_processor,
    qwen_word_tokenizer,
    save_qwen_image_processor,
    word_tokenizer,
)


def clip_l14_336_vision():
    """CLIP ViT-L/14 at 336 px: LLaVA-1.5's vision tower (576 patch tokens, D=1024)."""

    return transformers.CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768,
    )


def clip_l14_text():
    """CLIP ViT-L/14's text tower (12 layers, width 768, 77 positions)."""

    return transformers.CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, projection_dim=768,
    )


def _vicuna(hidden: int, layers: int, heads: int, intermediate: int):
    return transformers.LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, vocab_size=32064, max_position_embeddings=4096,
    )


LLAVA_GEOMETRIES = {
    "llava-1.5-7b": lambda: _vicuna(4096, 32, 32, 11008),
    "llava-1.5-13b": lambda: _vicuna(5120, 40, 40, 13824),
}


def llava_config(name: str):
    """``transformers.LlavaConfig`` of a published LLaVA-1.5 model, by name (see :data:`LLAVA_GEOMETRIES`)."""

    if name not in LLAVA_GEOMETRIES:
        raise ParExportError(f"unknown model config {name!r}; available: {', '.join(LLAVA_GEOMETRIES)}")
    return transformers.LlavaConfig(
        vision_config=clip_l14_336_vision(), text_config=LLAVA_GEOMETRIES[name](), image_token_index=32000,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )


# LLaVA-NeXT (LLaVA-1.6) grids at 336 px tiles: 2x1, 1x2, 2x2, 3x1, 1x3 tiles.
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def save_llava_geometry(folder, name: str = "llava-1.5-7b", text_layers: int = 2, seed: int = 0,
                        next_pinpoints: list | None = None):
    """A random-weight LLaVA folder at a published geometry (full vision tower and projector, the
    LLM cut to ``text_layers`` layers), with a CLIP image processor at the tower's size, a word
    tokenizer and LLaVA-1.5's chat template: real-size export/build/verify checks without weights.
    With ``next_pinpoints``, a LLaVA-NeXT (anyres) folder with ``transformers.LlavaNextProcessor`` instead.

    Returns ``(llava_folder, clip_folder)``; the CLIP folder holds a CLIP-L text tower (random)
    whose vision tower is the LLaVA's, as CLIP-L/336 is LLaVA-1.5's.
    """


    folder = Path(folder)
    config = llava_config(name)
    config.text_config.num_hidden_layers = text_layers
    vision = config.vision_config
    tokenizer = word_tokenizer(append_eos=False)
    torch.manual_seed(seed)
    if next_pinpoints:
        config = transformers.LlavaNextConfig(vision_config=vision, text_config=config.text_config,
                                 image_grid_pinpoints=next_pinpoints, image_token_index=SPECIAL.index("<image>"),
                                 vision_feature_layer=-2, vision_feature_select_strategy="default")
        model = transformers.LlavaNextForConditionalGeneration(config).eval()
        size = vision.image_size
        image_processor = transformers.LlavaNextImageProcessorPil(size={"shortest_edge": size}, image_grid_pinpoints=next_pinpoints,
                                                  crop_size={"height": size, "width": size})
        processor = transformers.LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                       patch_size=vision.patch_size, vision_feature_select_strategy="default",
                                       num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    else:
        config.image_token_id = SPECIAL.index("<image>")
        model = transformers.LlavaForConditionalGeneration(config).eval()
        processor = llava_processor(tokenizer, vision.image_size, vision.patch_size)
    model.save_pretrained(folder / "llava", safe_serialization=True)
    processor.save_pretrained(folder / "llava")
    text = clip_l14_text().to_dict()
    text.update(vocab_size=config.text_config.vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision.to_dict(), projection_dim=768)).eval()
    clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
    clip.save_pretrained(folder / "clip", safe_serialization=True)
    word_tokenizer(append_eos=True).save_pretrained(folder / "clip")
    return folder / "llava", folder / "clip"


def save_qwen2_5_vl_geometry(folder, text_layers: int = 2, seed: int = 0):
    """A random-weight Qwen2.5-VL-3B folder: the vision tower at full size (32 blocks, width 1280,
    112 px windows, full attention in blocks 7/15/23/31, merger to 2048), the LLM cut to
    ``text_layers`` layers (vocabulary and width as published), Qwen's image processor defaults
    and a word tokenizer with Qwen's special tokens and chat template."""


    folder = Path(folder)
    tokenizer = qwen_word_tokenizer()
    vocab = tokenizer.get_vocab()
    config = transformers.Qwen2_5_VLConfig(
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]),
        text_config=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=text_layers,
                         num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=128000, tie_word_embeddings=True,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                         pad_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|endoftext|>"],
                         eos_token_id=vocab["<|im_end|>"]),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    save_qwen_image_processor(folder, patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                              max_pixels=28 * 28 * 1280)
    tokenizer.save_pretrained(folder)
    return folder
