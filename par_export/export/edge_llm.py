"""``par-export export --format edge-llm``: Qwen2.5-VL's visual graph in TensorRT Edge-LLM 0.11's
layout, with PAR inside.

Edge-LLM's exporter (``tensorrt-edgellm-export``) writes ``visual/model.onnx`` with the inputs
``input [4 * num_groups, 1176]`` fp16 (flattened patches), ``rotary_pos_emb [4 * num_groups,
head_dim / 2]`` fp32 (per-patch rotary angles, patch order), ``cu_seqlens`` / ``cu_window_seqlens``
int32 (image and window boundaries, window order), ``window_index`` / ``reverse_window_index`` int64
``[num_groups]`` and ``max_seqlen_carrier`` int32 (its length carries the longest sequence), and the
output ``output [num_groups, hidden]`` fp16. Its attention is the ``trt_edgellm::ViTAttentionPlugin``
op. This graph takes the same inputs (same names, dtypes and ranks) plus ``query_embeds [I, hidden]``
(one per image) and ``budget``, computes attention with standard ops (masks from the boundaries, so
ONNX Runtime runs it), and returns the reduced rows of the I images of the call (``cu_seqlens``
bounds them; N and K differ per image):

- ``output [sum K, hidden]`` fp16: each image's kept (merged) tokens in raster order of its merged
  grid, image after image;
- ``num_kept [I]`` int64: K per image;
- ``keep_index [sum K]`` int64: index of each row in its image's ``t x h/2 x w/2`` merged grid, from
  which a runtime takes its M-RoPE position (t, h, w) as it does for the full grid.

Weights stay fp32 inside; a TensorRT build with ``--fp16`` lowers them.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from transformers.vision_utils import get_vision_position_ids

from par_export.errors import ExportError
from par_export.export.trace import finalize_graph, trace_onnx
from par_export.export.validate import Case, check_graph, compare_with_torch, summarize
from par_export.models.onnx_config import GraphSpec
from par_export.models.qwen2_5_vl import (
    QwenVisionParGraph,
    image_bounds,
    rotary_angles,
    segment_ids,
    window_layout,
)
from par_export.reduce import PARConfig, reducer_class
from par_export.reduce.checks import dynamic_token_axis

EDGE_INPUTS = ("input", "rotary_pos_emb", "cu_seqlens", "cu_window_seqlens", "window_index",
               "reverse_window_index", "max_seqlen_carrier")
OUTPUTS = ("output", "num_kept", "keep_index")


class EdgeLlmVisualGraph(nn.Module):
    """Edge-LLM's visual inputs -> the Qwen2.5-VL tower (:meth:`QwenVisionParGraph.tower`) -> reducer."""

    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def forward(self, input, rotary_pos_emb, cu_seqlens, cu_window_seqlens, window_index, reverse_window_index,
                max_seqlen_carrier, query_embeds, budget):
        window_ids = segment_ids(input.shape[0], cu_window_seqlens)
        image_ids = segment_ids(input.shape[0], cu_seqlens)
        tokens, received = self.graph.tower(input.float(), rotary_pos_emb.float(), window_index, reverse_window_index,
                                            window_ids.unsqueeze(0) == window_ids.unsqueeze(1),
                                            image_ids.unsqueeze(0) == image_ids.unsqueeze(1))
        # Edge-LLM reads the longest sequence from this input's length; the masks need no such
        # bound, but the input stays so that a runtime feeding Edge-LLM's inputs can feed ours.
        tokens = tokens + max_seqlen_carrier[:0].sum().to(tokens.dtype)
        embeds, num_kept, keep_index = self.graph.reduce_images(tokens, received, cu_seqlens, query_embeds.float(),
                                                                budget)
        valid = keep_index >= 0  # [I, W]: the rows of image 0, then image 1, ...
        return embeds[valid].half(), num_kept, keep_index[valid]


def padded_outputs(rows: np.ndarray, num_kept: np.ndarray, keep_index: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's flat outputs (``rows [sum K, D]``, ``num_kept [I]``, ``keep_index [sum K]``) as the
    padded per-image outputs of a ``vision_par`` graph: ``image_embeds [I, max K, D]`` (zeros) and
    ``keep_index [I, max K]`` (-1) past each image's K."""
    images, width = len(num_kept), int(num_kept.max())
    embeds = np.zeros((images, width, rows.shape[-1]), rows.dtype)
    index = np.full((images, width), -1, keep_index.dtype)
    starts = np.concatenate([[0], np.cumsum(num_kept)])
    for i, k in enumerate(num_kept.tolist()):
        embeds[i, :k] = rows[starts[i]:starts[i] + k]
        index[i, :k] = keep_index[starts[i]:starts[i] + k]
    return {"image_embeds": embeds, "num_kept": num_kept, "keep_index": index}


def edge_inputs(visual, image_grid_thw: torch.Tensor, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Edge-LLM's visual inputs for the images of ``image_grid_thw [I, 3]`` (its runtime computes the
    same on the host)."""
    angles = rotary_angles(get_vision_position_ids(image_grid_thw, visual.spatial_merge_size), visual.inv_freq)
    window_index, cu_window = window_layout(visual, image_grid_thw)
    patches = int(angles.shape[0])
    return {
        "input": pixel_values[:patches].astype(np.float16),
        "rotary_pos_emb": angles.numpy().astype(np.float32),
        "cu_seqlens": image_bounds(image_grid_thw).numpy().astype(np.int32),
        "cu_window_seqlens": cu_window.numpy().astype(np.int32),
        "window_index": window_index.long().numpy(),
        "reverse_window_index": np.argsort(window_index.numpy()).astype(np.int64),
        "max_seqlen_carrier": np.zeros(patches, np.int32),
    }


def edge_geometry(qwen):
    """What :func:`edge_inputs` reads, from the model (its rotary frequencies included)."""
    visual = qwen.visual
    return SimpleNamespace(spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
                           patch_size=visual.patch_size, inv_freq=visual.rotary_pos_emb.inv_freq)


EDGE_SPEC = GraphSpec(
    name="model", inputs=EDGE_INPUTS + ("query_embeds", "budget"), outputs=OUTPUTS,
    dynamic_axes={"input": {0: "4*num_groups"}, "rotary_pos_emb": {0: "4*num_groups"},
                  "cu_seqlens": {0: "batch_p1"}, "cu_window_seqlens": {0: "num_windows_p1"},
                  "window_index": {0: "num_groups"}, "reverse_window_index": {0: "num_groups"},
                  "max_seqlen_carrier": {0: "max_seqlen"}, "query_embeds": {0: "images"},
                  "output": {0: "kept"}, "num_kept": {0: "images"}, "keep_index": {0: "kept"}})
"""``visual/model.onnx``: Edge-LLM's input names and axes, plus PAR's ``query_embeds`` and ``budget``."""


def check_options(method: str, budget, clip_path, fp16: bool, plugin: bool) -> None:
    """Refuse what this layout cannot take, before anything loads: a budget other than a fixed K
    (the graph's ``budget`` input), a reducer that needs the same N for every image, and options
    of the ``onnx`` layout (a CLIP folder, an fp16 graph, the plugin op)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ExportError(f"--format edge-llm takes a fixed budget K >= 1 (an input of the graph), got {budget!r}")
    if not reducer_class(method).dynamic_tokens:
        raise ExportError(f"method {method!r} cannot export with a per-image token count")
    given = [flag for flag, value in (("--clip", clip_path), ("--fp16", fp16), ("--plugin", plugin)) if value]
    if given:
        raise ExportError(f"{', '.join(given)}: not taken by --format edge-llm (LLM-space PAR, fp32 weights that "
                          "TensorRT's --fp16 build lowers, standard ops)")


def export_into(steps, work: Path, final: Path, folder: Path, family, inputs, method: str, budget: int, config,
                opset: int) -> dict:
    """Write ``final/visual/model.onnx`` + ``final/visual/config.json`` (+ ``final/processor``) for the
    model in ``folder`` (loaded by :func:`~par_export.export.exporter.export_model`), validated
    against PyTorch on images of three shapes, one per call and two in one call; returns the report
    (also ``final/report.json``; ``passed`` False leaves the caller to refuse it)."""
    if family.name != "qwen2_5_vl":
        raise ExportError(f"{folder}: --format edge-llm writes Qwen2.5-VL's visual graph; this is {family.name} "
                          "(TensorRT Edge-LLM 0.11 runs no LLaVA)")
    config = (config or PARConfig()).replace(budget=budget)
    config = config.replace(k_max=max(config.k_max, budget))
    qwen = family.adapter.from_pretrained(folder, method, config)
    module = EdgeLlmVisualGraph(QwenVisionParGraph(qwen, "input")).eval()
    geometry = edge_geometry(qwen)
    onnx_config = family.onnx_config(budget_input=True)
    hidden = qwen.model.config.text_config.hidden_size
    grids = onnx_config.validation_grids(config.k_max)[:3]
    rng = np.random.default_rng(0)
    width = 3 * qwen.model.config.vision_config.temporal_patch_size * geometry.patch_size ** 2
    steps.update()

    def feed_for(grids_hw, query_on=True):
        grid = torch.tensor([[1, h, w] for h, w in grids_hw])
        feed = edge_inputs(geometry, grid, rng.standard_normal((int(grid.prod(-1).sum()), width)))
        query = rng.standard_normal((len(grids_hw), hidden))
        query[-1] *= query_on  # the last image without a prompt: attention fallback
        feed["query_embeds"] = query.astype(np.float16)
        feed["budget"] = np.array(budget, np.int64)
        return feed

    steps.set_postfix_str("trace visual")
    visual_dir = final / "visual"
    visual_dir.mkdir()
    raw = work / EDGE_SPEC.filename
    pair = onnx_config.pair_grids(config.k_max)
    dummy = feed_for(pair)  # two images: no size of either is traced as a constant
    with dynamic_token_axis(config.k_max), torch.no_grad():
        trace_onnx(module, tuple(torch.from_numpy(dummy[n]) for n in EDGE_SPEC.inputs), EDGE_SPEC, opset, raw)
    metadata = {"format": "tensorrt-edgellm-0.11-visual", "model": str(folder), "family": family.name,
                "method": method, "budget": budget, "width": config.k_max, "config": config.to_dict(),
                "min_tokens": config.k_max}
    finalize_graph(raw, visual_dir / EDGE_SPEC.filename, metadata, fp16=False, output_names=EDGE_SPEC.outputs)
    steps.update(2)

    steps.set_postfix_str("validate")
    calls = [[grid] for grid in grids] + [pair]
    cases = compare_with_torch(
        module, visual_dir / EDGE_SPEC.filename,
        [Case(" + ".join(f"grid={h}x{w}" for h, w in call) + f" budget={budget}",
              feed_for(call, query_on=i not in (1, 3))) for i, call in enumerate(calls)],
        list(OUTPUTS), layout=lambda out: padded_outputs(out["output"].astype(np.float32), out["num_kept"],
                                                         out["keep_index"]), precision="fp16")
    report = {**check_graph(visual_dir / EDGE_SPEC.filename), **summarize(cases, "fp16", True), "cases": cases,
              "metadata": metadata}
    steps.update()
    model_config = qwen.model.config.to_dict()
    model_config["par"] = {"method": method, "budget": budget, "min_tokens": config.k_max,
                           "outputs": {"output": "[sum K, hidden] fp16 kept rows, raster order, image after image",
                                       "num_kept": "[images] int64 K per image",
                                       "keep_index": "[sum K] int64 index in its image's t x h/2 x w/2 merged grid"},
                           "extra_inputs": {"query_embeds": "[images, hidden] fp16: mean LLM input embedding of "
                                                            "each image's rewritten prompt (zeros: no prompt)",
                                            "budget": "[] int64 K"}}
    (visual_dir / "config.json").write_text(json.dumps(model_config, indent=2, default=str))
    inputs.save(final)
    (final / "report.json").write_text(json.dumps(report, indent=2, default=str))
    steps.update()
    return report
