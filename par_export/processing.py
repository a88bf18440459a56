"""Model inputs as the checkpoint's own processor makes them.

One place turns images and questions into model inputs for export, build calibration,
verify, run, chat, eval and the pipeline: the folder's image processor (resize,
crop, rescale, normalize exactly as ``transformers`` does) and its tokenizer's chat
template. Nothing here resizes or templates by hand, except the family's fallback
template for a tokenizer that has none (said in a warning).

An artifact carries the same processor under :data:`PROCESSOR_DIR`, written by
``save_pretrained``, so ``transformers.AutoProcessor.from_pretrained(artifact / "processor")``
rebuilds the inputs in any application.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import transformers
from PIL import Image, UnidentifiedImageError

from par_export.errors import ParExportError

PROCESSOR_DIR = "processor"
IMAGE_LAYOUT_KEYS = ("image_grid_thw", "image_sizes")
"""What a processor returns besides ``pixel_values`` that says how it cut each image: Qwen's patch
grids ``[I, 3]``, LLaVA-NeXT's original sizes ``[I, 2]`` (each family's adapter reads its own;
InternVL's tiles per image are its runs of image tokens over the tokens per tile)."""
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def image_layout(encoded: dict):
    """The :data:`IMAGE_LAYOUT_KEYS` entry of a processor's output, or ``None`` (LLaVA-1.5)."""
    return next((encoded[key] for key in IMAGE_LAYOUT_KEYS if key in encoded), None)


class InputError(ParExportError):
    """An image, prompt or processor folder that cannot give model inputs; the message says which and why."""


def hub_kwargs() -> dict:
    """``from_pretrained`` keywords for processors and tokenizers: local folders, no remote code."""
    return {"local_files_only": True, "trust_remote_code": False}


def load_pretrained(loader, folder: str | Path):
    """``loader.from_pretrained(folder)`` offline, or one :class:`InputError` naming the folder.

    Catches every ``Exception``: a malformed ``tokenizer.json`` raises a bare ``Exception`` from the
    Rust tokenizers library ("data did not match any variant ..."), and ``KeyError``, ``TypeError``,
    ``ValueError`` or ``OSError`` from transformers for others; each means the folder's files are
    unreadable, which is the user's to fix, not an internal error.
    """
    if not Path(folder).is_dir():
        raise InputError(f"{folder}: missing (expected a folder written by save_pretrained)")
    try:
        return loader.from_pretrained(folder, **hub_kwargs())
    except Exception as err:  # see the docstring
        raise unreadable(folder, loader.__name__, err) from None


def unreadable(folder: str | Path, loader: str, err: Exception) -> InputError:
    """The one line for a folder whose files ``loader`` cannot read: the folder, the error's type and
    its first line."""
    first = (str(err).splitlines() or [""])[0]
    return InputError(f"{folder}: {loader} does not load it ({type(err).__name__}: {first})")


VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def open_image(path: str | Path):
    """An RGB ``PIL.Image`` from ``path``; a missing, unreadable or oversized file, or a video, is an
    :class:`InputError`."""
    if Path(path).suffix.lower() in VIDEO_SUFFIXES:
        raise InputError(f"{path}: video input is not supported yet (one image per prompt)")
    if Path(path).exists() and not Path(path).is_file():
        # a FIFO or a device would block the read (or never end); a folder is not an image either
        raise InputError(f"{path}: not a regular file (a folder, FIFO or device); expected an image file")
    return _decode(path, str(path))


def decode_image(data: bytes, label: str = "image"):
    """An RGB ``PIL.Image`` from encoded bytes (PNG, JPEG, ...: what a client sends a server);
    undecodable or oversized data is an :class:`InputError` naming ``label``."""

    if not data:
        raise InputError(f"{label}: empty (expected the bytes of an encoded image file)")
    return _decode(io.BytesIO(data), label)


def _decode(source, label: str):
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"{label}: no such image") from None
    except Image.DecompressionBombError as err:
        raise InputError(f"{label}: image too large to decode safely ({err})") from None
    except UnidentifiedImageError:  # its message names the file object (a BytesIO repr for a request)
        raise InputError(f"{label}: not a readable image (no format Pillow reads: PNG, JPEG, WebP, ...)") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{label}: not a readable image ({err})") from None


class ComponentProcessor:
    """A checkpoint's processor put together from its image processor and tokenizer.

    Used only where ``transformers.AutoProcessor`` cannot be built (transformers without torchvision cannot
    construct processors that have a video processor, e.g. ``Qwen2_5_VLProcessor``). It expands
    each image placeholder with the real processor class's own ``replace_image_token`` (so the
    count is transformers'), tokenizes with the checkpoint's tokenizer, and gives
    ``mm_token_type_ids`` (1 on image tokens) as that processor does.
    """

    def __init__(self, processor_class, image_processor, tokenizer, settings: dict | None = None):
        self.processor_class = processor_class
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = getattr(tokenizer, "chat_template", None)
        # what replace_image_token reads: Qwen's image token; InternVL's context token, the tokens
        # around an image and the tokens per tile (processor_config.json's image_seq_length)
        self.settings = dict(settings or {})
        self.image_seq_length = self.settings.get("image_seq_length")
        self.start_image_token = getattr(tokenizer, "start_image_token", None)
        self.end_image_token = getattr(tokenizer, "end_image_token", None)
        self.image_token = (getattr(tokenizer, "context_image_token", None) or getattr(tokenizer, "image_token", None)
                            or "<|image_pad|>")

    @classmethod
    def from_folder(cls, folder: Path) -> ComponentProcessor:
        name, settings = None, {}
        for config in PROCESSOR_FILES:
            if (folder / config).is_file():
                values = json.loads((folder / config).read_text())
                name = name or values.get("processor_class")
                if config == "processor_config.json":
                    settings = values
        processor_class = getattr(transformers, name or "", None)
        if processor_class is None or not hasattr(processor_class, "replace_image_token"):
            raise InputError(f"{folder}: processor class {name!r} cannot be built here and has no image-token rule")
        return cls(processor_class, load_pretrained(transformers.AutoImageProcessor, folder),
                   load_pretrained(transformers.AutoTokenizer, folder), settings)

    def apply_chat_template(self, messages, **kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def save_pretrained(self, folder: str | Path) -> None:
        """The image processor and tokenizer as the checkpoint had them, with the processor class
        named in ``preprocessor_config.json`` (as Qwen's checkpoints do)."""

        self.image_processor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        config = Path(folder) / "preprocessor_config.json"
        settings = json.loads(config.read_text())
        settings["processor_class"] = self.processor_class.__name__
        config.write_text(json.dumps(settings, indent=2) + "\n")
        if self.settings:  # the processor's own settings (InternVL's image_seq_length)
            (Path(folder) / "processor_config.json").write_text(json.dumps(self.settings, indent=2) + "\n")

    def __call__(self, images=None, text=None, return_tensors="pt", images_kwargs=None, **tokenizer_kwargs) -> dict:
        image_inputs = dict(self.image_processor(images=list(images), return_tensors=return_tensors,
                                                 **(images_kwargs or {}))) if images else {}
        texts, index = [], 0
        for item in text:
            pieces = item.split(self.image_token)
            expanded = pieces[0]
            for piece in pieces[1:]:
                expanded += self.processor_class.replace_image_token(self, image_inputs, index) + piece
                index += 1
            texts.append(expanded)
        encoded = dict(self.tokenizer(texts, return_tensors=return_tensors, **tokenizer_kwargs))
        if getattr(self.processor_class, "return_mm_token_type_ids", False):  # Qwen's processors give them
            image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
            encoded["mm_token_type_ids"] = (encoded["input_ids"] == image_id).to(encoded["input_ids"].dtype)
        image_inputs.pop("num_patches", None)  # as InternVLProcessor: the tiles per image are in the runs
        return {**encoded, **image_inputs}


class ModelInputs:
    """A checkpoint's processor: images -> ``pixel_values``, questions -> chat prompts.

    Args:
        processor: an ``transformers.AutoProcessor`` result (``image_processor`` + ``tokenizer``).
        image_token: the placeholder string the prompt carries for each image.
        fallback_template: ``str.format`` template with ``{prompt}`` and the image token,
            used only when the tokenizer has no chat template.
    """

    def __init__(self, processor, image_token: str, fallback_template: str):
        self.processor = processor
        self.image_processor = processor.image_processor
        self.tokenizer = processor.tokenizer
        self.image_token = image_token
        self.fallback_template = fallback_template
        self._warned = False

    @classmethod
    def from_folder(cls, folder: str | Path, image_token: str = "<image>",
                    fallback_template: str = "USER: <image>\n{prompt} ASSISTANT:") -> ModelInputs:
        """Load the processor of a local model or artifact folder (checked before loading)."""

        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder (expected a local model folder with its processor)")
        if not any((folder / name).is_file() for name in PROCESSOR_FILES):
            raise InputError(f"{folder}: no image processor config ({' or '.join(PROCESSOR_FILES)}); save the "
                             "checkpoint's processor there with save_pretrained")
        if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            raise InputError(f"{folder}: no tokenizer (tokenizer.json / tokenizer_config.json)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*requires torchvision.*")  # the PIL backend is exact
            try:
                processor = transformers.AutoProcessor.from_pretrained(folder, **hub_kwargs())
            except (AttributeError, ImportError):
                # transformers cannot build a processor with a video slot (Qwen2.5-VL's) when torchvision
                # is absent: its video-processor registry is a placeholder. Same parts, loaded one by one.
                processor = ComponentProcessor.from_folder(folder)
            except Exception as err:  # as in load_pretrained: a malformed file raises any of several types
                # InternVL's processor fails on its video slot with a ValueError (torchvision missing, or
                # no video processor config in a saved processor folder): the same parts, one by one,
                # where its class has an image-token rule; otherwise the folder is unreadable
                try:
                    processor = ComponentProcessor.from_folder(folder)
                except Exception:  # its own files unreadable too (a garbled JSON): AutoProcessor's error says why
                    raise unreadable(folder, "transformers.AutoProcessor", err) from None
        if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
            raise InputError(f"{folder}: {type(processor).__name__} has no image processor and tokenizer pair")
        token = getattr(processor, "image_token", None) or image_token
        return cls(processor, token, fallback_template)

    def save(self, folder: str | Path) -> Path:
        """``save_pretrained`` into ``folder / processor``; returns that folder."""
        target = Path(folder) / PROCESSOR_DIR
        self.processor.save_pretrained(target)
        return target

    # images ---------------------------------------------------------------------------------
    def image_features(self, images: list) -> dict[str, np.ndarray]:
        """Everything the image processor returns for ``images`` (PIL), as numpy arrays."""
        out = self.image_processor(images=list(images), return_tensors="np")
        return {k: np.asarray(v) for k, v in out.items()}

    def pixel_values(self, images: list) -> np.ndarray:
        """``[B, 3, H, W]`` float32 exactly as the checkpoint's image processor gives them."""
        return self.image_features(images)["pixel_values"].astype(np.float32)

    def display_image(self, pixel_values: np.ndarray) -> np.ndarray:
        """``[3, H, W]`` normalized pixels -> ``[H, W, 3]`` uint8: what the tower saw, for overlays."""
        mean = np.asarray(self.image_processor.image_mean, np.float32)[:, None, None]
        std = np.asarray(self.image_processor.image_std, np.float32)[:, None, None]
        rgb = (pixel_values * std + mean) * 255.0
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0)

    # text -----------------------------------------------------------------------------------
    def chat_prompt(self, prompt: str) -> str:
        """A user turn with one image and ``prompt``, through the chat template; a prompt that
        already holds the image placeholder is taken as the full prompt, unchanged."""
        if self.image_token in prompt:
            if prompt.count(self.image_token) != 1:
                raise InputError(f"prompt holds {prompt.count(self.image_token)} {self.image_token!r} placeholders; "
                                 "one image per prompt is supported")
            return prompt
        if getattr(self.tokenizer, "chat_template", None) or getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            if text.count(self.image_token) != 1:
                raise InputError(f"the chat template gave {text.count(self.image_token)} {self.image_token!r} "
                                 "placeholders for one image; expected exactly one")
            return text
        if not self._warned:
            warnings.warn(f"the tokenizer has no chat template; prompts use {self.fallback_template!r}", stacklevel=2)
            self._warned = True
        return self.fallback_template.format(prompt=prompt)

    def encode(self, prompts: list[str], images: list) -> dict:
        """The processor's own ``input_ids`` / ``attention_mask`` ``[B, T]`` (left padded, image
        placeholders expanded) and ``pixel_values``, as torch tensors."""
        texts = [self.chat_prompt(p) for p in prompts]
        return dict(self.processor(images=list(images), text=texts, padding=True, padding_side="left",
                                   return_tensors="pt"))
