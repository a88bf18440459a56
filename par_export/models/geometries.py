"""Published model geometries as transformers configs (no weights): for FLOPs and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from par_export.errors import ParExportError
from par_export.models.llava import CHAT_TEMPLATE
from par_export.models.tiny import (
    SPECIAL,
    internvl_word_tokenizer,
    llava_processor,
    qwen_word_tokenizer,
    save_internvl_processor,
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


# Qwen3-VL-2B and -4B share the vision tower (24 blocks, width 1024, 16 px patches, a 48 x 48 learned
# position grid, DeepStack after blocks 5, 11, 17); the merger's output and the LLM differ.
QWEN3_VL_GEOMETRIES = {
    "qwen3-vl-2b": dict(hidden_size=2048, intermediate_size=6144, num_attention_heads=16),
    "qwen3-vl-4b": dict(hidden_size=2560, intermediate_size=9728, num_attention_heads=32),
}


def save_qwen3_vl_geometry(folder, name: str = "qwen3-vl-2b", text_layers: int = 2, seed: int = 0):
    """A random-weight Qwen3-VL folder at a published geometry (:data:`QWEN3_VL_GEOMETRIES`): the
    vision tower at full size, the LLM cut to ``text_layers`` layers (width, heads, vocabulary and
    interleaved M-RoPE as published), Qwen's image processor at 16 px patches and a word tokenizer
    with Qwen's special tokens and chat template."""

    folder = Path(folder)
    tokenizer = qwen_word_tokenizer()
    vocab = tokenizer.get_vocab()
    text = QWEN3_VL_GEOMETRIES[name]
    config = transformers.Qwen3VLConfig(
        vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                           out_hidden_size=text["hidden_size"], patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
        text_config=dict(**text, num_hidden_layers=text_layers, num_key_value_heads=8, head_dim=128,
                         vocab_size=151936, max_position_embeddings=262144, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": [24, 20, 20], "mrope_interleaved": True},
                         pad_token_id=vocab["<|endoftext|>"]),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = transformers.Qwen3VLForConditionalGeneration(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    save_qwen_image_processor(folder, "Qwen3VLProcessor", patch_size=16, merge_size=2, temporal_patch_size=2,
                              min_pixels=64 * 64, max_pixels=32 * 32 * 1280)
    tokenizer.save_pretrained(folder)
    return folder


# InternVL3-1B and -2B (-hf): InternViT-300M at 448 px (24 layers, width 1024, 14 px patches, 256
# tokens per tile after the pixel shuffle), a Qwen2.5 LLM of 896 / 1536.
INTERNVL_GEOMETRIES = {
    "internvl3-1b": dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14),
    "internvl3-2b": dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12),
}


def save_internvl_geometry(folder, name: str = "internvl3-1b", text_layers: int = 2, seed: int = 0):
    """A random-weight InternVL3 "-hf" folder at a published geometry (:data:`INTERNVL_GEOMETRIES`):
    InternViT-300M and the projector at full size, the Qwen2.5 LLM cut to ``text_layers`` layers,
    the processor's tiling (448 px tiles, up to 12 plus the thumbnail) and a word tokenizer with
    InternVL's special tokens and chat template."""

    folder = Path(folder)
    tokenizer = internvl_word_tokenizer()
    vocab = tokenizer.get_vocab()
    config = transformers.InternVLConfig(
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=[448, 448], patch_size=[14, 14]),
        text_config=dict(model_type="qwen2", **INTERNVL_GEOMETRIES[name], num_hidden_layers=text_layers,
                         num_key_value_heads=2, vocab_size=151674, max_position_embeddings=32768,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=vocab["<|im_end|>"]),
        image_token_id=vocab["<IMG_CONTEXT>"], image_seq_length=256, downsample_ratio=0.5)
    torch.manual_seed(seed)
    model = transformers.InternVLForConditionalGeneration(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    save_internvl_processor(folder, tokenizer, tile=448, tokens_per_tile=256, max_patches=12)
    return folder
