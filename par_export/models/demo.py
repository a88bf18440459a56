"""The embedded demo VLM (``--model demo``): a tiny CLIP and a tiny LLaVA trained on the
procedural VQA of :mod:`par_export.data.vqa` by ``tools/train_demo.py``."""

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
