"""The artifact's numpy runtime layouts equal what each family's PyTorch code computes, over many
image sizes: LLaVA-NeXT's packed order (transformers' ``pack_image_features``) and Qwen2.5-VL's tower
index inputs (transformers' ``get_vision_position_ids`` / ``get_vision_window_index``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from par_export.models.layouts import NEWLINE, LlavaNextLayout, num_crops, packed_order, qwen_vision_inputs
from par_export.models.llava_next import crops_per_image, image_layouts
from par_export.models.qwen2_5_vl import vision_inputs

ROOT = Path(__file__).resolve().parents[1]

NEXT_GEOMETRIES = [
    {"image_size": 32, "patch_size": 8, "image_grid_pinpoints": [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]},
    {"image_size": 336, "patch_size": 14,  # LLaVA-NeXT's published grid
     "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]},
]


def next_config(geometry: dict):
    vision = SimpleNamespace(image_size=geometry["image_size"], patch_size=geometry["patch_size"])
    return SimpleNamespace(vision_config=vision, image_grid_pinpoints=geometry["image_grid_pinpoints"])


@pytest.mark.parametrize("geometry", NEXT_GEOMETRIES, ids=["tiny", "published"])
def test_llava_next_packed_order_is_transformers(geometry):
    rng = np.random.default_rng(0)
    scale = geometry["image_size"]
    sizes = [(scale, scale), (scale // 2, 3 * scale), (3 * scale, scale // 3), (1, 1), (2 * scale + 7, scale + 3)]
    sizes += [tuple(int(v) for v in rng.integers(1, 4 * scale, 2)) for _ in range(40)]
    config = next_config(geometry)
    for size in sizes:
        crops = crops_per_image(config, [size])[0]
        assert num_crops(geometry, size) == crops, size
        expected = image_layouts(config, [size], [crops])[0].order.numpy()
        np.testing.assert_array_equal(packed_order(geometry, size, crops), expected, err_msg=str(size))


def test_llava_next_rows_put_a_newline_after_each_row_that_kept_a_token():
    geometry = NEXT_GEOMETRIES[0]
    feed, order = LlavaNextLayout().crops_feed(geometry, np.zeros((5, 3, 32, 32), np.float32), (40, 70))
    content = feed["content_index"]
    keep = np.sort(np.random.default_rng(1).choice(len(content), 9, replace=False))
    outputs = {"num_kept": np.array([9]), "keep_index": keep[None], "image_newline": np.full(4, -7.0, np.float32),
               "image_embeds": np.arange(9 * 4, dtype=np.float32).reshape(1, 9, 4)}
    rows = LlavaNextLayout().rows(outputs, order)
    kept_rows = rows[rows[:, 0] != -7.0]
    np.testing.assert_array_equal(kept_rows, outputs["image_embeds"][0])  # every kept row, in order
    # one newline per packed grid row (and per base crop) that holds a kept token
    lines, row_kept, content_at = 0, False, 0
    for entry in order.tolist():
        if entry == NEWLINE:
            lines += row_kept
            row_kept = False
        else:
            row_kept |= content_at in set(keep.tolist())
            content_at += 1
    assert (rows[:, 0] == -7.0).sum() == lines


@pytest.mark.parametrize("patch, merge, window", [(14, 2, 112), (4, 2, 16), (14, 2, 56)])
def test_qwen_vision_inputs_are_transformers(patch, merge, window):
    visual = SimpleNamespace(spatial_merge_size=merge, window_size=window, patch_size=patch)
    geometry = {"spatial_merge_size": merge, "window_size": window, "patch_size": patch}
    rng = np.random.default_rng(2)
    calls = [[(1, 4, 4)], [(1, 28, 28)], [(1, 28, 60), (1, 62, 28)], [(2, 8, 12)]]
    calls += [[(1, *(2 * rng.integers(1, 40, 2)).tolist()) for _ in range(int(rng.integers(1, 4)))] for _ in range(25)]
    for grids in calls:
        grid = torch.tensor(grids)
        expected = {k: v.numpy() for k, v in vision_inputs(visual, grid).items()}
        ours = qwen_vision_inputs(geometry, np.array(grids))
        assert set(ours) == set(expected)
        for name in expected:
            np.testing.assert_array_equal(ours[name], expected[name].astype(np.int64), err_msg=f"{grids} {name}")


def test_opening_an_artifact_imports_no_model_code(tiny_artifact):
    """The runtime reads its contract from typed metadata: no family module of par_export.models
    (only its numpy layouts) and no model's transformers modeling module (modeling_llava, ...) is
    imported to open and run an artifact (the processor loads transformers' auto classes)."""
    art, image = tiny_artifact
    code = ("import sys\nfrom par_export.artifact import Artifact\n"
            f"with Artifact.open({str(art)!r}) as a:\n"
            "    from PIL import Image\n"
            f"    out = a.reduce([Image.open({str(image)!r}).convert('RGB')], ['red'])\n"
            "assert out[0].num_kept >= 1\n"
            "allowed = {'par_export.models', 'par_export.models.layouts'}\n"
            "loaded = [m for m in sys.modules if (m.startswith('par_export.models') and m not in allowed)\n"
            "          or (m.startswith('transformers.models.') and '.modeling_' in m and '.auto.' not in m)]\n"
            "print(loaded)\nassert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
