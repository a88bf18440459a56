"""The embedded demo VLMs: ``--model demo`` (a tiny CLIP and a tiny LLaVA, trained by
``tools/train_demo.py``) and ``--model demo-qwen`` (a tiny Qwen2.5-VL, trained by
``tools/train_demo_qwen.py``), both on the procedural VQA of :mod:`par_export.data.vqa`."""

from __future__ import annotations

from pathlib import Path

import transformers

from par_export.models.loading import ModelFolderError

DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
IMAGE_SIZE, PATCH = 128, 8  # 16 x 16 = 256 visual tokens
# The CLIP tokenizer's special-token order: transformers' CLIP text model treats
# eos_token_id == 2 as a legacy config and pools at the largest token id instead of
# at the EOS, so the demo CLIP's EOS is id 3.
CLIP_SPECIAL = ["<pad>", "<s>", "<unk>", "</s>", "<image>"]


def demo_paths() -> tuple[Path, Path]:
    """``(llava_dir, clip_dir)`` of the shipped demo weights."""
    llava, clip = DEMO_DIR / "llava", DEMO_DIR / "clip"
    if not (llava / "config.json").is_file() or not (clip / "config.json").is_file():
        raise ModelFolderError(f"demo weights not found under {DEMO_DIR}; train them with tools/train_demo.py")
    return llava, clip


def demo_qwen_path() -> Path:
    """The shipped demo-qwen folder."""
    folder = DEMO_DIR / "qwen"
    if not (folder / "config.json").is_file():
        raise ModelFolderError(f"demo-qwen weights not found under {DEMO_DIR}; train them with tools/train_demo_qwen.py")
    return folder


QWEN_PATCH, QWEN_MERGE = 4, 2  # a merged token covers 8 x 8 pixels: 256 tokens for a 128 x 128 scene
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 32 * 32, 136 * 136  # the processor keeps every scene size of the VQA as drawn


def demo_qwen_config(vocab: dict[str, int]):
    """Qwen2.5-VL at demo size: tower 4 x 128 (window attention over 4 x 4 merged tokens, full
    attention in blocks 1 and 3, no absolute position embedding: position reaches the LLM only
    through M-RoPE), 2x2 merger, Qwen2 LLM 4 x 192 with M-RoPE sections (t, h, w) = (2, 6, 16)
    of its 24 rotary pairs per head and ``rope_theta`` 1e4.

    Why not Qwen's (16, 24, 24) proportions at theta 1e6: the sections take the rotary
    frequencies in order, so w gets the lowest ones; at head dim 48 they turn by under 3e-4 rad
    per column, and a 24-column grid spans under 0.01 rad. Trained that way, a probe read each
    token's row from the LLM's layer-1 state (98%) but not its column (about 20%). At theta 30,
    and still at theta 1000, the pairs turned so fast that the attention lookups learned slowly
    (val 0.36-0.39 against 0.51 after 10 minutes). At theta 1e4 h gets 0.46-0.07 rad per row,
    w's first pairs 0.05-0.02 rad per column (rows and columns both read at 99-100%) and its last
    ones stay nearly still over the short distances between a question and its image, where the
    content lookups live (docs/demo.md: runs 1-4)."""
    vision = dict(depth=4, hidden_size=128, intermediate_size=384, num_heads=4, out_hidden_size=192,
                  patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE, temporal_patch_size=2,
                  window_size=4 * QWEN_MERGE * QWEN_PATCH, fullatt_block_indexes=[1, 3])
    text = dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=4, vocab_size=len(vocab), max_position_embeddings=1024,
                rope_scaling={"type": "mrope", "mrope_section": [2, 6, 16], "rope_theta": 10000.0}, pad_token_id=0,
                bos_token_id=vocab["<|endoftext|>"], eos_token_id=vocab["<|im_end|>"], tie_word_embeddings=False)
    return transformers.Qwen2_5_VLConfig(
        vision_config=vision, text_config=text, image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"], vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"], tie_word_embeddings=False)


def demo_clip_config(vocab_size: int):
    vision = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                  image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=64)
    text = dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, pad_token_id=0, bos_token_id=1,
                eos_token_id=CLIP_SPECIAL.index("</s>"))
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def demo_llava_config(vision_config, vocab_size: int, image_token_id: int):
    text = transformers.LlamaConfig(hidden_size=192, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=vocab_size, max_position_embeddings=512,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    return transformers.LlavaConfig(vision_config=vision_config.to_dict(), text_config=text, image_token_index=image_token_id,
                       image_seq_length=(IMAGE_SIZE // PATCH) ** 2, vision_feature_layer=-2,
                       vision_feature_select_strategy="default")
