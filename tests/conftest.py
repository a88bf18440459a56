"""Shared fixtures: synthetic token batches with known structure."""

from __future__ import annotations

import pytest
import torch

import par_export  # noqa: F401  (registers every reducer)
from par_export.reduce import available_methods, reducer_class

METHODS = sorted(available_methods())


def budget_for(method: str, k: int = 32):
    """A budget every method accepts (pool needs a python int)."""
    return k


@pytest.fixture
def batch():
    """``x [2, 144, 32]``, prompt ``[2, 3, 32]``, CLS attention ``[2, 144]`` (12x12 grid)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 144, 32, generator=gen)
    prompt = torch.randn(2, 3, 32, generator=gen)
    attn = torch.softmax(torch.randn(2, 144, generator=gen) * 3, dim=-1)
    return x, prompt, attn


def needs(method: str) -> dict:
    cls = reducer_class(method)
    return {"uses_prompt": cls.uses_prompt, "needs_attn": cls.needs_attn}


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    """Tiny random-weight LLaVA and CLIP folders written with ``save_pretrained``."""
    from par_export.models.tiny import save_tiny_clip, save_tiny_llava

    root = tmp_path_factory.mktemp("tiny")
    llava = save_tiny_llava(root / "llava")
    clip = save_tiny_clip(root / "clip", llava)
    return llava, clip


def encode_random_images(folder, questions: list[str], sizes: list[tuple[int, int]], seed: int = 0) -> dict:
    """The folder's own processor and chat template on random images of ``sizes`` (width, height),
    one per question: a left-padded batch, as the multi-family tests share it."""
    import numpy as np
    from PIL import Image

    from par_export.models.families import family_for

    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    return family_for(folder).inputs(folder).encode(questions, images)


def cli_export_and_build(model, root, *export_flags) -> tuple:
    """``par-export export`` then ``build --precision fp32 --backend onnxruntime`` through the CLI;
    returns ``(onnx folder, artifact folder)`` (build verifies and must pass)."""
    from par_export.cli import main

    onnx, art = root / "onnx", root / "art"
    assert main(["export", "--model", str(model), "--out", str(onnx), *export_flags]) == 0
    assert main(["build", str(onnx), "--precision", "fp32", "--backend", "onnxruntime", "--out", str(art)]) == 0
    return onnx, art


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    """``(artifact folder, image)``: ``par-export build --model tiny --budget 16`` (fp32, ONNX Runtime; a
    budget input exported with K = 16) through the
    CLI, and a 40x48 PNG with a red square."""
    import numpy as np
    from PIL import Image

    from par_export.cli import main

    root = tmp_path_factory.mktemp("tiny-artifact")
    art = root / "art"
    assert main(["build", "--model", "tiny", "--precision", "fp32", "--backend", "onnxruntime", "--budget", "16",
                 "--out", str(art)]) == 0
    rgb = np.full((48, 40, 3), 110, np.uint8)
    rgb[8:24, 4:20] = (220, 30, 30)
    Image.fromarray(rgb).save(root / "scene.png")
    return art, root / "scene.png"
