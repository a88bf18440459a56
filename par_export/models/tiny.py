"""Tiny random-weight LLaVA and CLIP folders, built from configs and saved with
``save_pretrained``, so the real local loading code runs without downloads.

Used by the tests and by ``par-export`` commands until a trained demo model ships.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from par_export.models import internvl, llava, qwen2_5_vl
from par_export.models.loading import pretrained_kwargs
from par_export.processing import ComponentProcessor

WORDS = (
    "a an the of in on at to is are what which where how many there color colour shape side left right "
    "top bottom middle red green blue yellow purple orange white black circle square triangle star "
    "photo picture image describe question answer using single word phrase please yes no one two three "
    "USER ASSISTANT : ? . ,"
).split()
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


def word_tokenizer(append_eos: bool, words: list[str] | None = None, specials: list[str] | None = None):
    """A word-level ``transformers.PreTrainedTokenizerFast`` over ``words`` (default :data:`WORDS`), special
    tokens first (in the order of ``specials``, default :data:`SPECIAL`), ``<s>`` prepended,
    ``</s>`` appended if asked (CLIP pools at the EOS)."""

    vocab = {tok: i for i, tok in enumerate((specials or SPECIAL) + list(dict.fromkeys(words or WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = "<s> $A </s>" if append_eos else "<s> $A"
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def tiny_llava_config(image_size: int = 32, patch_size: int = 4, vision_hidden: int = 32, text_hidden: int = 32,
                      vision_layers: int = 2, text_layers: int = 2):
    vocab_size = len(SPECIAL) + len(dict.fromkeys(WORDS))
    vision = transformers.CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers,
        num_attention_heads=4, image_size=image_size, patch_size=patch_size, projection_dim=16,
    )
    text = transformers.LlamaConfig(
        hidden_size=text_hidden, intermediate_size=2 * text_hidden, num_hidden_layers=text_layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=1024,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=SPECIAL.index("<image>"),
        image_seq_length=(image_size // patch_size) ** 2, vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def llava_processor(tokenizer, image_size: int, patch_size: int):
    """A ``transformers.LlavaProcessor`` as LLaVA-1.5 checkpoints ship it: CLIP image processor (resize the
    shortest edge to ``image_size``, bicubic, center crop), ``<image>`` expanded to the patch
    count, LLaVA-1.5's chat template."""

    # the PIL processors are named: the plain names warn without torchvision, then give these
    image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    return transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=llava.CHAT_TEMPLATE)


def save_tiny_llava(folder: str | Path, seed: int = 0, **geometry) -> Path:
    """Write a random-weight tiny LLaVA (safetensors, tokenizer, processor, chat template) to ``folder``."""

    torch.manual_seed(seed)
    config = tiny_llava_config(**geometry)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    vision = config.vision_config
    llava_processor(word_tokenizer(append_eos=False), vision.image_size, vision.patch_size).save_pretrained(folder)
    return folder


def save_tiny_clip(folder: str | Path, llava_folder: str | Path, seed: int = 1) -> Path:
    """Write a tiny CLIP whose vision tower is the LLaVA folder's (as CLIP-L/336 is LLaVA-1.5's)."""

    llava = transformers.LlavaForConditionalGeneration.from_pretrained(llava_folder, **pretrained_kwargs())
    vision = llava.config.vision_config
    text = dict(
        vocab_size=llava.config.text_config.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(seed)
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision.to_dict(), projection_dim=16)).eval()
    clip.vision_model.load_state_dict(llava.model.vision_tower.state_dict())
    folder = Path(folder)
    clip.save_pretrained(folder, safe_serialization=True)
    word_tokenizer(append_eos=True).save_pretrained(folder)
    return folder


def save_tiny_llava_next(folder: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """Write a random-weight tiny LLaVA-NeXT (anyres grids up to 2x2 tiles of ``image_size``) with its
    ``transformers.LlavaNextProcessor`` (CLIP-style resize + crop per tile, LLaVA-1.5's chat template)."""

    s = image_size
    pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [s, 3 * s], [3 * s, s]]
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=s, patch_size=patch_size, projection_dim=16)
    text = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(SPECIAL) + len(dict.fromkeys(WORDS)),
                       max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = transformers.LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=SPECIAL.index("<image>"),
                             image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                             vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = transformers.LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():  # a visible newline row (its init is zeros)
        model.model.image_newline.normal_()
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    image_processor = transformers.LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                              image_grid_pinpoints=pinpoints)
    transformers.LlavaNextProcessor(image_processor=image_processor, tokenizer=word_tokenizer(append_eos=False),
                       patch_size=patch_size, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                       chat_template=llava.CHAT_TEMPLATE).save_pretrained(folder)
    return folder


QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]


def qwen_word_tokenizer(words: list[str] | None = None):
    """A word-level tokenizer over ``words`` (default :data:`WORDS`) with Qwen2.5-VL's special
    tokens and chat template."""

    return chatml_word_tokenizer(QWEN_SPECIAL, qwen2_5_vl.CHAT_TEMPLATE, words,
                                 image_token="<|image_pad|>", video_token="<|video_pad|>")


INTERNVL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]


def chatml_word_tokenizer(specials: list[str], chat_template: str, words: list[str] | None = None, **named_tokens):
    """A word-level tokenizer over ``words`` (default :data:`WORDS`) with ChatML's role words, the
    special tokens ``specials`` (``<|endoftext|>`` first: pad and unknown) and ``chat_template``;
    ``named_tokens``: the processor's names for some of them (``image_token="<|image_pad|>"``)."""

    words = list(words or WORDS) + ["user", "assistant", "system"]
    vocab = {t: i for i, t in enumerate(specials + list(dict.fromkeys(words)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    # added tokens are matched before the pre-tokenizer splits on punctuation ("<|", "im_start", "|>"):
    # transformers 5 no longer adds ``additional_special_tokens`` to a ``tokenizer_object`` itself
    core.add_special_tokens(specials)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        additional_special_tokens=specials[1:], extra_special_tokens=named_tokens)
    tokenizer.chat_template = chat_template
    return tokenizer


def save_qwen_image_processor(folder: Path, processor_class: str = "Qwen2_5_VLProcessor", **settings) -> None:
    """A Qwen2-VL image processor (PIL backend) saved with the processor class the checkpoints name
    (Qwen2.5-VL's, or ``Qwen3VLProcessor``)."""

    transformers.Qwen2VLImageProcessorPil(**settings).save_pretrained(folder)
    config = Path(folder) / "preprocessor_config.json"
    values = json.loads(config.read_text())
    values["processor_class"] = processor_class
    config.write_text(json.dumps(values, indent=2))


def save_tiny_qwen2_5_vl(folder: str | Path, seed: int = 0, patch_size: int = 4) -> Path:
    """Write a random-weight tiny Qwen2.5-VL (window attention, full-attention blocks 1 and 3, 2x2
    patch merger, M-RoPE) with a Qwen2-VL image processor (dynamic resolution, multiples of
    ``2 * patch_size``), a word tokenizer with Qwen's special tokens and a Qwen-style chat template."""

    tokenizer = qwen_word_tokenizer()
    vocab = tokenizer.get_vocab()
    config = transformers.Qwen2_5_VLConfig(
        vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=4 * patch_size, fullatt_block_indexes=[1, 3]),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(vocab), max_position_embeddings=1024,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, pad_token_id=0,
                         bos_token_id=vocab["<|endoftext|>"], eos_token_id=vocab["<|im_end|>"]),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    return _save_tiny_qwen(folder, transformers.Qwen2_5_VLForConditionalGeneration, config, tokenizer, seed, patch_size,
                           "Qwen2_5_VLProcessor")


def save_tiny_qwen3_vl(folder: str | Path, seed: int = 0, patch_size: int = 4) -> Path:
    """Write a random-weight tiny Qwen3-VL (learned position grid, 2x2 merger, DeepStack levels from
    tower blocks 0 and 1, interleaved M-RoPE) with a Qwen2-VL image processor named as Qwen3-VL's
    (``Qwen3VLProcessor``), a word tokenizer with Qwen's special tokens and chat template."""

    tokenizer = qwen_word_tokenizer()
    vocab = tokenizer.get_vocab()
    config = transformers.Qwen3VLConfig(
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
                           # at the default 0.02 a 32-wide tower attends almost uniformly: the attention
                           # each token receives (the no-prompt fallback's ranking) is flat to float noise
                           initializer_range=0.1),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, vocab_size=len(vocab), max_position_embeddings=1024,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2],
                                          "mrope_interleaved": True},
                         pad_token_id=0),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
    return _save_tiny_qwen(folder, transformers.Qwen3VLForConditionalGeneration, config, tokenizer, seed, patch_size,
                           "Qwen3VLProcessor")


def internvl_word_tokenizer(words: list[str] | None = None):
    """A word-level tokenizer with InternVL's special tokens (``<img>``, ``</img>``, ``<IMG_CONTEXT>``,
    named as its processor reads them) and chat template."""

    return chatml_word_tokenizer(INTERNVL_SPECIAL, internvl.CHAT_TEMPLATE, words, start_image_token="<img>",
                                 end_image_token="</img>", context_image_token="<IMG_CONTEXT>", video_token="<video>")


def save_internvl_processor(folder: Path, tokenizer, tile: int, tokens_per_tile: int, max_patches: int) -> None:
    """InternVL's processor as its checkpoints hold it: ``GotOcr2ImageProcessor`` (``tile`` px tiles,
    up to ``max_patches`` plus the thumbnail), the tokenizer, ``processor_config.json``."""

    image_processor = transformers.GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True,
                                                            min_patches=1, max_patches=max_patches)
    ComponentProcessor(transformers.InternVLProcessor, image_processor, tokenizer,
                       {"image_seq_length": tokens_per_tile, "processor_class": "InternVLProcessor"}).save_pretrained(folder)


def save_tiny_internvl(folder: str | Path, seed: int = 0, tile: int = 32, patch_size: int = 4, max_patches: int = 6) -> Path:
    """Write a random-weight tiny InternVL in transformers' "-hf" layout (InternViT with a CLS token,
    pixel shuffle 0.5, MLP projector, Qwen2 LLM): ``tile`` px tiles of ``(tile / patch_size / 2)**2``
    tokens, up to ``max_patches`` tiles plus the thumbnail, with its processor's parts
    (:func:`save_internvl_processor`)."""

    tokenizer = internvl_word_tokenizer()
    vocab = tokenizer.get_vocab()
    tokens_per_tile = (tile // patch_size // 2) ** 2
    config = transformers.InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=[tile, tile], patch_size=[patch_size, patch_size]),
        text_config=dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(vocab),
                         max_position_embeddings=1024, pad_token_id=0, bos_token_id=0,
                         eos_token_id=vocab["<|im_end|>"]),
        image_token_id=vocab["<IMG_CONTEXT>"], image_seq_length=tokens_per_tile, downsample_ratio=0.5)
    torch.manual_seed(seed)
    model = transformers.InternVLForConditionalGeneration(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    save_internvl_processor(folder, tokenizer, tile, tokens_per_tile, max_patches)
    return folder


def _save_tiny_qwen(folder, model_class, config, tokenizer, seed: int, patch_size: int, processor_class: str) -> Path:
    """A random-weight Qwen-VL folder: the model (seeded), its image processor (multiples of
    ``2 * patch_size``, 4 to 144 merged tokens) named as ``processor_class``, and the tokenizer."""
    torch.manual_seed(seed)
    model = model_class(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    unit = 2 * patch_size
    save_qwen_image_processor(folder, processor_class, patch_size=patch_size, merge_size=2, temporal_patch_size=2,
                              min_pixels=4 * unit * unit, max_pixels=12 * 12 * unit * unit)
    tokenizer.save_pretrained(folder)
    return folder
