"""Image -> ``pixel_values`` with a CLIP-style normalization."""

from __future__ import annotations

import numpy as np

# OpenAI CLIP's normalization, used when a model folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(rgb: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> ``[3, H, W]`` float32, ``(x / 255 - mean) / std``."""
    pixels = (rgb.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return pixels.transpose(2, 0, 1)
