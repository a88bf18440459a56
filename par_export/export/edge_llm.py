"""``par-export export --format edge-llm``: Qwen2.5-VL's, Qwen3-VL's or InternVL's visual graph in
TensorRT Edge-LLM 0.11's layout, with PAR inside.

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

Qwen3-VL (:class:`EdgeLlmQwen3VisualGraph`): Edge-LLM's inputs are ``input``, ``rotary_pos_emb``,
``cu_seqlens``, ``fast_pos_embed_idx [4, T]`` int64 and ``fast_pos_embed_weight [4, T]`` fp16 (the
bilinear taps of the learned position grid) and ``max_seqlen_carrier``; its outputs ``output`` and
one ``deepstack_features_{i} [T / 4, hidden]`` per DeepStack level, which its LLM adds after decoder
layer i. PAR's graph returns each level's kept rows under the same name (``[sum K, hidden]``, the
same slots and merge weights as ``output``), then ``num_kept`` and ``keep_index``.

InternVL (:class:`EdgeLlmInternVLVisualGraph`, Edge-LLM's ``internvl3_5`` visual model for
``model_type`` ``internvl``): Edge-LLM's input is ``input [tiles, 3, 448, 448]`` fp16 and its output
``output [tiles x 256, hidden]`` (pixel shuffle and projector inside). PAR's graph takes one image's
tiles and returns its ``[K, hidden]`` kept rows, ``num_kept [1]`` and ``keep_index [K]``.

Weights stay fp32 inside; a TensorRT build with ``--fp16`` lowers them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from transformers.vision_utils import get_vision_position_ids

from par_export.errors import ExportError
from par_export.export.trace import finalize_graph, trace_onnx
from par_export.export.validate import Case, check_graph, compare_with_torch, summarize
from par_export.models.internvl import InternVLVisionParGraph
from par_export.models.layouts import qwen3_vision_inputs
from par_export.models.onnx_config import GraphSpec
from par_export.models.qwen2_5_vl import (
    QwenVisionParGraph,
    image_bounds,
    rotary_angles,
    segment_ids,
    window_layout,
)
from par_export.models.qwen3_vl import Qwen3VisionParGraph
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


class EdgeLlmQwen3VisualGraph(nn.Module):
    """Edge-LLM's Qwen3-VL visual inputs -> the tower (:meth:`Qwen3VisionParGraph.tower`) -> reducer,
    each DeepStack level reduced with the main rows' slots and weights."""

    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def forward(self, input, rotary_pos_emb, cu_seqlens, fast_pos_embed_idx, fast_pos_embed_weight, max_seqlen_carrier,
                query_embeds, budget):
        tokens, received, levels = self.graph.tower(input.float(), rotary_pos_emb.float(), fast_pos_embed_idx.t(),
                                                    fast_pos_embed_weight.t().float(), cu_seqlens)
        tokens = tokens + max_seqlen_carrier[:0].sum().to(tokens.dtype)  # kept as an input, as in Qwen2.5-VL's
        out, embeds, deepstack = self.graph.reduce_images(tokens, received, levels, cu_seqlens, query_embeds.float(),
                                                          budget)
        valid = out.keep_index >= 0
        return (embeds[valid].half(), *(level[valid].half() for level in deepstack), out.num_kept,
                out.keep_index[valid])


def padded_outputs(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's flat outputs (``output [sum K, D]``, ``deepstack_features_{i} [sum K, D]`` where
    present, ``num_kept [I]``, ``keep_index [sum K]``) as the padded per-image outputs of a
    ``vision_par`` graph: ``image_embeds [I, max K, D]`` (and ``deepstack_embeds [L, I, max K, D]``),
    zeros, and ``keep_index [I, max K]``, -1, past each image's K."""
    num_kept, keep_index = out["num_kept"], out["keep_index"]
    images, width = len(num_kept), int(num_kept.max())
    starts = np.concatenate([[0], np.cumsum(num_kept)])

    def pad(flat: np.ndarray, fill) -> np.ndarray:
        padded = np.full((images, width, *flat.shape[1:]), fill, flat.dtype)
        for i, k in enumerate(num_kept.tolist()):
            padded[i, :k] = flat[starts[i]:starts[i] + k]
        return padded

    levels = sorted((name for name in out if name.startswith("deepstack_features_")), key=lambda n: int(n.rsplit("_", 1)[1]))
    result = {"image_embeds": pad(out["output"].astype(np.float32), 0), "num_kept": num_kept,
              "keep_index": pad(keep_index, -1)}
    if levels:
        result["deepstack_embeds"] = np.stack([pad(out[name].astype(np.float32), 0) for name in levels])
    return result


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


def edge_inputs_qwen3(visual, image_grid_thw: torch.Tensor, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
    """Edge-LLM's Qwen3-VL visual inputs for the images of ``image_grid_thw [I, 3]`` (its runtime
    computes the same on the host); ``visual``: the Qwen3-VL tower."""
    host = qwen3_vision_inputs({"spatial_merge_size": visual.spatial_merge_size,
                                "position_grid_side": visual.num_grid_per_side}, image_grid_thw.numpy())
    angles = rotary_angles(torch.from_numpy(host["vision_position_ids"]), visual.rotary_pos_emb.inv_freq)
    patches = int(angles.shape[0])
    return {
        "input": pixel_values[:patches].astype(np.float16),
        "rotary_pos_emb": angles.numpy().astype(np.float32),
        "cu_seqlens": host["cu_seqlens"].astype(np.int32),
        "fast_pos_embed_idx": np.ascontiguousarray(host["pos_embed_index"].T),
        "fast_pos_embed_weight": np.ascontiguousarray(host["pos_embed_weight"].T).astype(np.float16),
        "max_seqlen_carrier": np.zeros(patches, np.int32),
    }


QWEN3_EDGE_INPUTS = ("input", "rotary_pos_emb", "cu_seqlens", "fast_pos_embed_idx", "fast_pos_embed_weight",
                     "max_seqlen_carrier")


def qwen3_edge_spec(levels: int) -> GraphSpec:
    """Qwen3-VL's ``visual/model.onnx`` with ``levels`` DeepStack levels: Edge-LLM's names and axes,
    plus PAR's ``query_embeds``, ``budget``, ``num_kept`` and ``keep_index``."""
    deepstack = tuple(f"deepstack_features_{i}" for i in range(levels))
    tokens = {0: "total_tokens"}
    return GraphSpec(
        name="model", inputs=QWEN3_EDGE_INPUTS + ("query_embeds", "budget"),
        outputs=("output", *deepstack, "num_kept", "keep_index"),
        dynamic_axes={"input": tokens, "rotary_pos_emb": tokens, "cu_seqlens": {0: "batch_p1"},
                      "fast_pos_embed_idx": {1: "total_tokens"}, "fast_pos_embed_weight": {1: "total_tokens"},
                      "max_seqlen_carrier": {0: "max_seqlen"}, "query_embeds": {0: "images"},
                      "output": {0: "kept"}, **{name: {0: "kept"} for name in deepstack},
                      "num_kept": {0: "images"}, "keep_index": {0: "kept"}})


class EdgeLlmInternVLVisualGraph(nn.Module):
    """Edge-LLM's InternVL3.5 visual input (``input [tiles, 3, S, S]`` fp16: one image's tiles) ->
    tower, pixel shuffle and projector (:class:`InternVLVisionParGraph`) -> reducer over all its tokens."""

    def __init__(self, graph):
        super().__init__()
        self.graph = graph

    def forward(self, input, query_embeds, budget):
        embeds, num_kept, keep_index = self.graph(input.float(), query_embeds.float(), budget)
        valid = keep_index >= 0
        return embeds[valid].half(), num_kept, keep_index[valid]


INTERNVL_EDGE_SPEC = GraphSpec(
    name="model", inputs=("input", "query_embeds", "budget"), outputs=OUTPUTS,
    dynamic_axes={"input": {0: "num_images"}, "output": {0: "kept"}, "keep_index": {0: "kept"}})
"""InternVL's ``visual/model.onnx``: Edge-LLM's ``input`` (its tiles are its "images"), plus PAR's."""


@dataclass
class EdgeLayout:
    """One family's visual graph in Edge-LLM's layout, and how to feed it.

    Attributes:
        module: the traced module; spec: its names and axes.
        image_inputs: ``(call, rng) -> feed``: Edge-LLM's inputs for the images of one call, random
            pixels (a call: Qwen's patch grids ``[(h, w), ...]``, InternVL's ``[tiles]``).
        calls: the validation calls (each image alone, then several in one call where the graph
            takes several); dummy: the traced call (no size of it becomes a constant).
        describe: a call's name in the report; keep_index: what ``keep_index`` indexes, for config.json.
    """

    module: nn.Module
    spec: GraphSpec
    image_inputs: Callable
    calls: list
    dummy: list
    describe: Callable
    keep_index: str


def edge_layout(family, model, onnx_config) -> EdgeLayout:
    """The family's :class:`EdgeLayout` (Qwen2.5-VL, Qwen3-VL, InternVL)."""
    if family.name == "internvl":
        side = onnx_config.extra_metadata(model)["tile_size"]
        return EdgeLayout(
            EdgeLlmInternVLVisualGraph(InternVLVisionParGraph(model, "input")).eval(), INTERNVL_EDGE_SPEC,
            lambda call, rng: {"input": rng.standard_normal((call[0], 3, *side)).astype(np.float16)},
            calls=[[1], [3], [5]], dummy=[3], describe=lambda call: f"tiles={call[0]}",
            keep_index="[K] int64 index in the image's tiles x tokens_per_tile tokens (processor order)")
    visual = model.visual
    if family.name == "qwen3_vl":
        module, spec = (EdgeLlmQwen3VisualGraph(Qwen3VisionParGraph(model, "input")).eval(),
                        qwen3_edge_spec(len(visual.deepstack_visual_indexes)))

        def host(grid, pixels):
            return edge_inputs_qwen3(visual, grid, pixels)
    else:
        module, spec, geometry = EdgeLlmVisualGraph(QwenVisionParGraph(model, "input")).eval(), EDGE_SPEC, \
            edge_geometry(model)

        def host(grid, pixels):
            return edge_inputs(geometry, grid, pixels)
    width = 3 * model.model.config.vision_config.temporal_patch_size * visual.patch_size ** 2

    def image_inputs(call, rng):
        grid = torch.tensor([[1, h, w] for h, w in call])
        return host(grid, rng.standard_normal((int(grid.prod(-1).sum()), width)))

    k_max = model.config.k_max
    pair = onnx_config.pair_grids(k_max)
    return EdgeLayout(module, spec, image_inputs, calls=[[g] for g in onnx_config.validation_grids(k_max)[:3]] + [pair],
                      dummy=pair, describe=lambda call: " + ".join(f"grid={h}x{w}" for h, w in call),
                      keep_index="[sum K] int64 index in its image's t x h/2 x w/2 merged grid")


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
    if family.name not in ("qwen2_5_vl", "qwen3_vl", "internvl"):
        raise ExportError(f"{folder}: --format edge-llm writes Qwen2.5-VL's, Qwen3-VL's or InternVL's visual graph; "
                          f"this is {family.name} (TensorRT Edge-LLM 0.11 runs no LLaVA)")
    config = (config or PARConfig()).replace(budget=budget)
    config = config.replace(k_max=max(config.k_max, budget))
    model = family.adapter.from_pretrained(folder, method, config)
    onnx_config = family.onnx_config(budget_input=True)
    fewest = onnx_config.min_tokens(model)  # InternVL: one tile's tokens; Qwen: the graph's width itself
    if budget > fewest:
        raise ExportError(f"budget {budget} exceeds the {fewest} tokens of the smallest image this model takes")
    if config.k_max > fewest:
        config = config.replace(k_max=fewest)
        model = family.adapter(model.model, method, config, model.tokenizer)
    layout = edge_layout(family, model, onnx_config)
    module, spec = layout.module, layout.spec
    hidden = model.model.config.text_config.hidden_size
    rng = np.random.default_rng(0)
    steps.update()

    def feed_for(call, query_on=True):
        feed = layout.image_inputs(call, rng)
        query = rng.standard_normal((len(call), hidden))
        query[-1] *= query_on  # the last image without a prompt: attention fallback
        feed["query_embeds"] = query.astype(np.float16)
        feed["budget"] = np.array(budget, np.int64)
        return feed

    steps.set_postfix_str("trace visual")
    visual_dir = final / "visual"
    visual_dir.mkdir()
    raw = work / spec.filename
    dummy = feed_for(layout.dummy)
    with dynamic_token_axis(config.k_max), torch.no_grad():
        trace_onnx(module, tuple(torch.from_numpy(dummy[n]) for n in spec.inputs), spec, opset, raw)
    metadata = {"format": "tensorrt-edgellm-0.11-visual", "model": str(folder), "family": family.name,
                "method": method, "budget": budget, "width": config.k_max, "config": config.to_dict(),
                "min_tokens": config.k_max}
    finalize_graph(raw, visual_dir / spec.filename, metadata, fp16=False, output_names=spec.outputs)
    steps.update(2)

    steps.set_postfix_str("validate")
    cases = compare_with_torch(
        module, visual_dir / spec.filename,
        [Case(f"{layout.describe(call)} budget={budget}", feed_for(call, query_on=i not in (1, 3)))
         for i, call in enumerate(layout.calls)],
        list(spec.outputs), layout=padded_outputs, precision="fp16")
    report = {**check_graph(visual_dir / spec.filename), **summarize(cases, "fp16", True), "cases": cases,
              "metadata": metadata}
    steps.update()
    model_config = model.model.config.to_dict()
    model_config["par"] = {"method": method, "budget": budget, "min_tokens": config.k_max,
                           "outputs": {"output": "[sum K, hidden] fp16 kept rows, raster order, image after image",
                                       **{name: "[sum K, hidden] fp16 this DeepStack level's rows of the same "
                                                "tokens, merged alike" for name in spec.outputs
                                          if name.startswith("deepstack_features_")},
                                       "num_kept": "[images] int64 K per image",
                                       "keep_index": layout.keep_index},
                           "extra_inputs": {"query_embeds": "[images, hidden] fp16: mean LLM input embedding of "
                                                            "each image's rewritten prompt (zeros: no prompt)",
                                            "budget": "[] int64 K"}}
    (visual_dir / "config.json").write_text(json.dumps(model_config, indent=2, default=str))
    inputs.save(final)
    (final / "report.json").write_text(json.dumps(report, indent=2, default=str))
    steps.update()
    return report
