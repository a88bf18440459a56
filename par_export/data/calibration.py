"""Calibration images for int8/fp8 builds that the caller picks: the procedural VQA scenes."""

from __future__ import annotations

from par_export.data.vqa import render, sample, split_seeds


def demo_scenes(count: int = 32) -> list:
    """``count`` ``PIL.Image`` scenes of the demo's training split (what ``--calib-images demo`` means);
    the export's processor resizes them."""
    return [render(sample(seed)) for seed in split_seeds("train", count)]
