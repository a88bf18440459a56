"""Each family's runtime contract, in numpy: how one image's processor output becomes the inputs of
its ``vision_par`` graph, and which rows of the graph's outputs the LLM receives.

An artifact's runtime reads these from its typed metadata (the geometry an export recorded) without
importing torch or the family's model code. Each layout computes what the family's PyTorch code
computes (transformers' ``pack_image_features`` for LLaVA-NeXT, ``get_vision_position_ids`` /
``get_vision_window_index`` for Qwen2.5-VL); ``tests/test_layouts.py`` checks them against it
over many image sizes. Shapes: ``N`` tokens of one image, ``S`` patches of a call, ``K`` kept rows,
``D`` the LLM's width.
"""

from __future__ import annotations

import numpy as np
import transformers

from par_export.errors import ParExportError

NEWLINE = -1
"""Entry of a LLaVA-NeXT packed order that is an ``image_newline`` row, not a tower token."""


class LlavaLayout:
    """LLaVA-1.5: ``pixel_values [B, 3, S, S]`` at the tower's size; every image has N tokens."""

    dynamic_tokens = False  # N is the same for every image: several images per call
    heatmap = True  # `run` draws the kept tokens over the (first crop's) square grid

    def image_feed(self, geometry: dict, image_features: dict) -> tuple[dict, object]:
        """The graph's image inputs from the processor's output, and the layout :meth:`rows` needs
        (none here)."""
        return {"pixel_values": np.asarray(image_features["pixel_values"], np.float32)}, None

    def num_tokens(self, geometry: dict, layout) -> int:
        """N of the image :meth:`image_feed` prepared."""
        return geometry["tokens_per_image"]

    def rows(self, outputs: dict, layout) -> np.ndarray:
        """The rows the LLM receives for the first image of ``outputs``: ``[K, D]``."""
        return outputs["image_embeds"][0, :int(outputs["num_kept"][0])]


class LlavaNextLayout(LlavaLayout):
    """LLaVA-NeXT: one image per call, its base crop plus the tiles of the best pinpoint grid
    (``pixel_values [C, 3, S, S]``), the content tokens picked by ``content_index [N]`` in packed
    order (base crop, then the unpadded tile grid row by row); the LLM receives a newline row after
    each grid row that kept a token. The layout is the packed order ``[T]`` (tower token index, or
    :data:`NEWLINE`)."""

    dynamic_tokens = True

    def image_feed(self, geometry: dict, image_features: dict) -> tuple[dict, np.ndarray]:
        """From the processor's ``pixel_values [1, P, 3, S, S]`` and ``image_sizes [1, 2]`` (h, w)."""
        return self.crops_feed(geometry, np.asarray(image_features["pixel_values"][0], np.float32),
                               tuple(int(v) for v in image_features["image_sizes"][0]))

    def crops_feed(self, geometry: dict, pixel_values: np.ndarray, image_size: tuple[int, int]):
        """``pixel_values [C, 3, S, S]`` (the processor's crops, padding dropped) and ``content_index
        [N]`` of one image of ``image_size`` (h, w), and its packed order."""
        crops = num_crops(geometry, image_size)
        order = packed_order(geometry, image_size, crops)
        return {"pixel_values": pixel_values[:crops], "content_index": order[order != NEWLINE]}, order

    def num_tokens(self, geometry: dict, layout: np.ndarray) -> int:
        return int((layout != NEWLINE).sum())

    def rows(self, outputs: dict, layout: np.ndarray) -> np.ndarray:
        """Kept rows ``[K, D]`` in packed order with the newline row after each grid row that kept a
        token: ``[K + rows, D]``."""
        k = int(outputs["num_kept"][0])
        rows = outputs["image_embeds"][0, :k]
        table = np.concatenate([rows, outputs["image_newline"].astype(rows.dtype)[None]])  # row K: the newline
        return table[rows_with_newlines(layout, outputs["keep_index"][0, :k])]


class InternVLLayout(LlavaLayout):
    """InternVL: one image per call, its tiles (the thumbnail last) as ``pixel_values [C, 3, S, S]``;
    its N = C x ``tokens_per_tile`` tokens in the processor's order. The layout is N."""

    dynamic_tokens = True
    heatmap = False  # several tiles: no one square grid to draw on

    def image_feed(self, geometry: dict, image_features: dict) -> tuple[dict, int]:
        """From the image processor's ``pixel_values [C, 3, S, S]`` of one image."""
        tiles = np.asarray(image_features["pixel_values"], np.float32)
        return {"pixel_values": tiles}, len(tiles) * geometry["tokens_per_tile"]

    def num_tokens(self, geometry: dict, layout: int) -> int:
        return layout


def rows_with_newlines(order: np.ndarray, keep_index: np.ndarray) -> np.ndarray:
    """``[R]`` int64: what the LLM receives of one LLaVA-NeXT image, as indices into its K kept rows,
    with K standing for the ``image_newline`` row that follows each grid row (and the base crop)
    that kept a token. ``order [T]``: :func:`packed_order`; ``keep_index [K]``: ascending indices of
    the kept content tokens. One rule for the eager adapter (torch rows) and the artifact (numpy)."""
    keep_index = np.asarray(keep_index)
    kept = np.zeros(int((order != NEWLINE).sum()), bool)
    kept[keep_index] = True
    plan, cursor, row_has_token, content = [], 0, False, 0
    for entry in np.asarray(order).tolist():
        if entry == NEWLINE:
            if row_has_token:
                plan.append(len(keep_index))
            row_has_token = False
            continue
        if kept[content]:
            plan.append(cursor)
            cursor += 1
            row_has_token = True
        content += 1
    return np.array(plan, np.int64)


def _best_resolution(geometry: dict, image_size: tuple[int, int]) -> tuple[int, int]:
    """The pinpoint (h, w) the processor resizes an image of ``image_size`` (h, w) to (transformers'
    own ``select_best_resolution``, plain Python)."""
    return transformers.image_processing_utils.select_best_resolution(list(image_size),
                                                                      geometry["image_grid_pinpoints"])


def num_crops(geometry: dict, image_size: tuple[int, int]) -> int:
    """Crops of one image: the base crop plus the tiles of its best pinpoint grid (as transformers'
    ``image_size_to_num_patches`` counts them)."""
    height, width = _best_resolution(geometry, image_size)
    side = geometry["image_size"]
    return len(range(0, height, side)) * len(range(0, width, side)) + 1


def packed_order(geometry: dict, image_size: tuple[int, int], crops: int) -> np.ndarray:
    """``[T]`` int64: for each row LLaVA-NeXT packs for one image, the index of its token in the
    flattened tower output ``[crops * L]`` (L tokens per crop), or :data:`NEWLINE`: the base crop's
    tokens, then the tile grid unpadded to the image's aspect ratio, a newline after each grid row
    (one newline after the base crop when the image has no tiles)."""
    side = geometry["image_size"] // geometry["patch_size"]
    length = side * side
    base = np.arange(length, dtype=np.int64)
    if crops == 1:
        return np.concatenate([base, [NEWLINE]])
    best_h, best_w = _best_resolution(geometry, image_size)
    grid_h, grid_w = best_h // geometry["image_size"], best_w // geometry["image_size"]
    tiles = np.arange(length, crops * length, dtype=np.int64).reshape(grid_h, grid_w, side, side)
    grid = tiles.transpose(0, 2, 1, 3).reshape(grid_h * side, grid_w * side)
    grid = _unpad(grid, image_size)
    with_newlines = np.concatenate([grid, np.full((grid.shape[0], 1), NEWLINE, np.int64)], axis=1)
    return np.concatenate([base, with_newlines.reshape(-1)])


def _unpad(grid: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The rows (or columns) of ``grid [H, W]`` that show the image, as transformers' ``unpad_image``."""
    original_h, original_w = image_size
    current_h, current_w = grid.shape
    if original_w / original_h > current_w / current_h:
        new_h = int(round(original_h * (current_w / original_w), 7))
        pad = (current_h - new_h) // 2
        return grid[pad:current_h - pad]
    new_w = int(round(original_w * (current_h / original_h), 7))
    pad = (current_w - new_w) // 2
    return grid[:, pad:current_w - pad]


class QwenLayout:
    """Qwen2.5-VL: one or several images per call, each any size the processor gives (S patches in
    all, ``N_i = S_i / merge**2`` merged tokens per image); the host computes the tower's index
    inputs (:func:`qwen_vision_inputs`). The layout is each image's N."""

    dynamic_tokens = True
    heatmap = False  # the patches are not an image until unflattened; `run` writes none yet

    def image_feed(self, geometry: dict, image_features: dict) -> tuple[dict, list[int]]:
        """Graph inputs of the processor's images (``pixel_values [S, ...]``, ``image_grid_thw [I, 3]``)
        in one call."""
        grid = np.asarray(image_features["image_grid_thw"], np.int64).reshape(-1, 3)
        sizes = (grid.prod(-1) // geometry["spatial_merge_size"] ** 2).tolist()
        for i, n in enumerate(sizes):
            if n < geometry["tokens_per_image"]:
                which = f"image {i} gives" if len(sizes) > 1 else "the image gives"
                raise ParExportError(f"{which} {n} merged tokens, fewer than the {geometry['tokens_per_image']} this "
                                     "graph was exported for; export with a smaller --k-max or use a larger image")
        feed = self.vision_inputs(geometry, grid)
        merge_unit = geometry["spatial_merge_size"] ** 2
        feed["pixel_values"] = np.asarray(image_features["pixel_values"][:merge_unit * sum(sizes)], np.float32)
        return feed, sizes

    @staticmethod
    def vision_inputs(geometry: dict, grid: np.ndarray) -> dict[str, np.ndarray]:
        """The tower's host-side inputs for the images of ``grid [I, 3]``."""
        return qwen_vision_inputs(geometry, grid)

    def num_tokens(self, geometry: dict, layout: list[int]) -> int:
        """N of the first image (``run`` feeds one)."""
        return layout[0]

    def rows(self, outputs: dict, layout, image: int = 0) -> np.ndarray:
        """Image ``image``'s kept rows ``[K_i, D]``."""
        return outputs["image_embeds"][image, :int(outputs["num_kept"][image])]


class Qwen3Layout(QwenLayout):
    """Qwen3-VL: Qwen2.5-VL's calls (several images of any size), the tower's inputs the learned
    position grid's bilinear taps instead of windows (:func:`qwen3_vision_inputs`). The LLM receives
    each kept token's main row and its row of every DeepStack level, reduced alike: ``[1 + L, K, D]``."""

    @staticmethod
    def vision_inputs(geometry: dict, grid: np.ndarray) -> dict[str, np.ndarray]:
        return qwen3_vision_inputs(geometry, grid)

    def rows(self, outputs: dict, layout, image: int = 0) -> np.ndarray:
        """Image ``image``'s kept rows ``[1 + L, K_i, D]``: main rows, then each DeepStack level's."""
        k = int(outputs["num_kept"][image])
        return np.concatenate([outputs["image_embeds"][None, image, :k], outputs["deepstack_embeds"][:, image, :k]])


def merge_block_positions(grid_thw: np.ndarray, merge: int) -> np.ndarray:
    """``[S, 2]`` int64: (h, w) of each patch of the images of ``grid_thw [I, 3]`` in the processor's
    order (merge x merge blocks in raster order, each block's patches in raster order, frames
    repeated), as transformers' ``get_vision_position_ids``."""
    positions = []
    for t, h, w in grid_thw.tolist():
        hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        blocks = (h // merge, merge, w // merge, merge)
        hw = np.stack([hpos.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1),
                       wpos.reshape(blocks).transpose(0, 2, 1, 3).reshape(-1)], axis=-1)
        positions.append(np.tile(hw, (t, 1)))
    return np.concatenate(positions).astype(np.int64)


def patch_bounds(grid_thw: np.ndarray) -> np.ndarray:
    """``cu_seqlens [I + 1]`` int64: the images' patch boundaries."""
    return np.concatenate([[0], np.cumsum(grid_thw.prod(-1))]).astype(np.int64)


def qwen3_vision_inputs(geometry: dict, grid_thw: np.ndarray) -> dict[str, np.ndarray]:
    """Qwen3-VL's host-side tower inputs for the images of ``grid_thw [I, 3]``:
    ``vision_position_ids [S, 2]`` (as :func:`merge_block_positions`), ``pos_embed_index [S, 4]``
    int64 and ``pos_embed_weight [S, 4]`` float32 (the bilinear taps, align_corners, of the learned
    ``side x side`` position grid resampled to each image's patch grid, as transformers'
    ``get_vision_interpolation_indices_and_weights``) and ``cu_seqlens [I + 1]``."""
    side = geometry["position_grid_side"]
    positions = merge_block_positions(grid_thw, geometry["spatial_merge_size"])
    counts = grid_thw.prod(-1)
    sizes = np.repeat(grid_thw[:, 1:], counts, axis=0)  # [S, 2]: the (h, w) of each patch's image
    source = positions * (side - 1) / np.maximum(sizes - 1, 1)  # align_corners: the ends meet
    floor = np.floor(source)
    taps = floor[..., None] + np.arange(2)  # [S, 2 axes, 2 taps]
    weights = np.clip(1.0 - np.abs(source[..., None] - taps), 0.0, None)
    taps = np.clip(taps, 0, side - 1).astype(np.int64)  # border: an edge tap repeats the edge
    index = (taps[:, 0, :, None] * side + taps[:, 1, None, :]).reshape(-1, 4)
    weight = (weights[:, 0, :, None] * weights[:, 1, None, :]).reshape(-1, 4)
    return {"vision_position_ids": positions, "pos_embed_index": index,
            "pos_embed_weight": weight.astype(np.float32), "cu_seqlens": patch_bounds(grid_thw)}


def qwen_vision_inputs(geometry: dict, grid_thw: np.ndarray) -> dict[str, np.ndarray]:
    """The tower's host-side index inputs (int64) for the images of ``grid_thw [I, 3]``:
    ``vision_position_ids [S, 2]`` ((h, w) of each patch, merge blocks first), ``window_index [S /
    merge**2]`` (merged-token order of windowed attention), ``window_ids [S]`` (each patch's window
    in that order) and ``cu_seqlens [I + 1]`` (the images' patch boundaries)."""
    merge = geometry["spatial_merge_size"]
    window_index, bounds, offset = [], [0], 0
    window = geometry["window_size"] // merge // geometry["patch_size"]  # in merged tokens
    for t, h, w in grid_thw.tolist():
        llm_h, llm_w = h // merge, w // merge
        pad_h, pad_w = window - llm_h % window, window - llm_w % window
        index = np.full((t, llm_h + pad_h, llm_w + pad_w), -100, np.int64)
        index[:, :llm_h, :llm_w] = np.arange(t * llm_h * llm_w).reshape(t, llm_h, llm_w)
        windows_h, windows_w = (llm_h + pad_h) // window, (llm_w + pad_w) // window
        index = index.reshape(t, windows_h, window, windows_w, window).transpose(0, 1, 3, 2, 4)
        index = index.reshape(t, windows_h * windows_w, window * window)
        sizes = (index != -100).sum(-1).reshape(-1)
        flat = index.reshape(-1)
        window_index.append(flat[flat != -100] + offset)
        bounds.extend((np.cumsum(sizes) * merge * merge + bounds[-1]).tolist())
        offset += t * llm_h * llm_w
    cu_window = np.array(bounds, np.int64)
    cu_window = cu_window[np.concatenate([[True], np.diff(cu_window) != 0])]  # empty windows: one bound
    vision_position_ids = merge_block_positions(grid_thw, merge)
    patches = vision_position_ids.shape[0]
    return {"vision_position_ids": vision_position_ids,
            "window_index": np.concatenate(window_index).astype(np.int64),
            "window_ids": np.searchsorted(cu_window[1:], np.arange(patches), side="right").astype(np.int64),
            "cu_seqlens": patch_bounds(grid_thw)}


LAYOUTS = {"llava": LlavaLayout(), "llava_next": LlavaNextLayout(), "qwen2_5_vl": QwenLayout(),
           "qwen3_vl": Qwen3Layout(), "internvl": InternVLLayout()}
"""The runtime layout of each family, by the name its export metadata records."""


def layout_for(family: str):
    """The runtime layout of ``family`` (an artifact's ``metadata.family``)."""
    if family not in LAYOUTS:
        raise ParExportError(f"model family {family!r} has no runtime layout in this par-export; known: "
                             f"{', '.join(sorted(LAYOUTS))}")
    return LAYOUTS[family]
