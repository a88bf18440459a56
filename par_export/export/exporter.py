"""``export_model``: model folder -> validated ONNX, in one of two layouts: ``onnx`` (``vision_par.onnx``
+ ``query_encoder.onnx``, every family) or ``edge-llm`` (Qwen2.5-VL's ``visual/model.onnx`` in
TensorRT Edge-LLM's input layout, :mod:`par_export.export.edge_llm`). Both load the model the same
way, trace with :func:`~par_export.export.trace.trace_onnx`, validate against PyTorch and write
nothing unless every case passes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import onnx
import torch
from tqdm.auto import tqdm

import par_export
from par_export.artifact.budget import Budget
from par_export.artifact.metadata import VERSION as METADATA_VERSION
from par_export.artifact.metadata import ExportMetadata
from par_export.errors import ExportError, ParExportError
from par_export.export import edge_llm
from par_export.export.custom_op import DOMAIN, OP_TYPE, VERSION, topk_cluster_node
from par_export.export.lint import lint_file
from par_export.export.trace import finalize_graph, trace_onnx
from par_export.export.validate import check_graph, compare_with_torch, summarize, validation_failure
from par_export.files import atomic_folder
from par_export.models.families import family_for
from par_export.models.graphs import QueryGraph
from par_export.models.names import TINY_RECORD, display_name, recorded, resolve_model
from par_export.models.onnx_config import DEFAULT_OPSET, VisionParOnnxConfig
from par_export.reduce import PARConfig, reducer_class
from par_export.reduce.checks import dynamic_token_axis


def _write_runtime_files(folder: Path, inputs, llava) -> None:
    """What a runtime needs beside the graphs: the checkpoint's processor (image processor,
    tokenizer, chat template) as ``save_pretrained`` writes it, and the query tokenizer."""
    inputs.save(folder)
    if llava.query_encoder is not None:
        llava.query_encoder.tokenizer.save_pretrained(folder / "tokenizer")


def query_settings(llava) -> dict | None:
    """How ``run`` rebuilds the query encoder's input: PAR's prompt rewrite and the tokenizer call."""
    query = llava.query_encoder
    return None if query is None else {"rewrite": query.rewrite, "template": query.template,
                                       "add_special_tokens": query.add_special_tokens,
                                       "max_length": query.max_length}


def export_model(
    model: str | Path,
    out: str | Path,
    method: str = "par",
    budget: int | str = "auto",
    config: PARConfig | None = None,
    clip_path: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    batch_max: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    plugin: bool = False,
    format: str = "onnx",
) -> dict:
    """Export, validate and lint; returns the report (also written to ``out/report.json``).

    Raises :class:`ExportError` (nothing written) when an input is bad or a graph
    fails validation. ``out`` must not exist unless ``overwrite``. ``plugin`` emits
    PAR's steps 5-6 as one ``par::TopKCluster`` node instead of standard ops. ``format``: one of
    :data:`FORMATS` (``edge-llm`` takes a fixed int ``budget`` and none of ``clip_path``, ``fp16``,
    ``plugin``).
    """
    out = Path(out)
    if format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if batch_max < 1:
        raise ExportError(f"batch_max must be >= 1, got {batch_max}")
    cls = reducer_class(method)
    if cls.tower_inputs:
        raise ExportError(f"method {method!r} is an authors' form: it reads the tower's "
                          f"{' and '.join(cls.tower_inputs)}, which the exported graph does not hand the reducer; "
                          f"export {method}_mean, or evaluate {method!r} in PyTorch (par-export eval)")
    if plugin and cls.name != "par":
        raise ExportError(f"--plugin replaces PAR's top-k clustering step; method {method!r} has none")
    try:  # the pooling grid is fixed at trace time; the others take K as an input or choose it (auto)
        budget_mode = Budget.for_export(cls, budget).traced
    except ParExportError as err:
        raise ExportError(str(err)) from None
    if format == "edge-llm":
        edge_llm.check_options(method, budget, clip_path, fp16, plugin)
    cfg = VisionParOnnxConfig(budget_input=budget_mode == "input", opset=opset, batch_max=batch_max, fp16=fp16)
    with atomic_folder(out, overwrite, ExportError, inputs=[p for p in (model, clip_path) if p]) as (final, work):
        # leave=False and a close on any exit: an error line is never drawn over by the bar
        with tqdm(total=6, desc="export", disable=not progress, unit="step", leave=False) as steps:
            steps.set_postfix_str("load")
            folder, tiny_clip = resolve_model(model, work)
            family = family_for(folder)
            if family.onnx_config is None:
                raise ExportError(f"{folder}: {family.name} runs with PAR in PyTorch ({family.adapter.__name__}), "
                                  "but its ONNX export is not supported yet")
            inputs = family.inputs(folder)  # refuse a folder without its processor before any work
            if format == "edge-llm":
                report = edge_llm.export_into(steps, work, final, folder, family, inputs, method, budget, config,
                                              cfg.opset)
                graphs = {"visual": report}
            else:
                report = _export_steps(steps, work, final, folder, tiny_clip, family, inputs, model, method, budget,
                                       budget_mode, config, clip_path, cfg, plugin)
                graphs = report["graphs"]
        if not report["passed"]:
            raise validation_failure(graphs, ExportError)
    return report


FORMATS = ("onnx", "edge-llm")
"""The layouts :func:`export_model` writes."""


def _export_steps(steps, work: Path, final: Path, llava_dir: Path, tiny_clip, family, inputs, model, method, budget,
                  budget_mode, config, clip_path, options: VisionParOnnxConfig, plugin: bool) -> dict:
    cfg = family.onnx_config(**vars(options))  # the family's export config with the caller's options
    clip_path = clip_path if clip_path is not None else tiny_clip
    config = (config if config is not None else PARConfig()).replace(budget=budget)
    if isinstance(budget, int) and budget > config.k_max:
        config = config.replace(k_max=budget)
    if cfg.dynamic_tokens and not reducer_class(method).dynamic_tokens:
        raise ExportError(f"{family.name}: N differs per image, and method {method!r} cannot export with a dynamic "
                          "token axis")
    if cfg.dynamic_tokens and plugin:
        raise ExportError(f"{family.name}: --plugin needs a static token axis; export with standard ops")
    reference = family.adapter.from_pretrained(llava_dir, method, config, clip_path=clip_path)
    n = cfg.min_tokens(reference)  # N itself, or its lower bound where N differs per image
    if cfg.dynamic_tokens and reference.config.k_max > n:  # the graph's width is min(k_max, smallest N)
        clip = reference.query_encoder if reference.config.space == "clip" else None
        reference = family.adapter(reference.model, method, reference.config.replace(k_max=n),
                                   reference.tokenizer, clip)
    if isinstance(budget, int) and budget > n:
        raise ExportError(f"budget {budget} exceeds the {n} tokens per image of this model")
    if plugin:
        reference.reducer.topk_cluster = topk_cluster_node  # eager: same math; traced: one custom node
    steps.update()

    vision_cfg = reference.model.config.vision_config
    query_dim = (vision_cfg.projection_dim if reference.config.space == "clip"
                 else reference.model.config.text_config.hidden_size)
    raw = work / "raw"
    raw.mkdir()
    common = {
        "metadata_version": METADATA_VERSION,
        "model": recorded(model, llava_dir),
        "family": family.name,
        "method": method,
        "budget": budget,
        "budget_input": cfg.budget_input,
        "width": min(reference.config.k_max, n) if not isinstance(budget_mode, int) else budget_mode,
        "tokens_per_image": n,
        **cfg.extra_metadata(reference),
        # an int for fixed-size towers; None: dynamic resolution (Qwen) or tiles (InternVL: tile_size)
        "image_size": image_size if isinstance(image_size := getattr(vision_cfg, "image_size", None), int) else None,
        "image_token_id": reference.model.config.image_token_id,
        "space": reference.config.space,
        "plugin": {"op": f"{DOMAIN}::{OP_TYPE}", "version": VERSION} if plugin else None,
        "clip": TINY_RECORD if str(model) == "tiny" else (str(clip_path) if clip_path else None),
        "model_name": display_name(model, llava_dir),
        "query_dim": query_dim,
        "query": query_settings(reference),
        "config": reference.config.to_dict(),
        "export": {"opset": cfg.opset, "fp16": cfg.fp16, "batch_max": cfg.batch_max,
                   "exporter": "torch.onnx.export (TorchScript, dynamo=False)"},
        "versions": {"par_export": par_export.__version__, "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__, "onnx": onnx.__version__},
    }
    max_sequence = 77 if reference.config.space == "clip" else reference.model.config.text_config.max_position_embeddings
    if reference.query_encoder is not None:
        max_sequence = reference.query_encoder.max_length
    common["shape_bounds"] = cfg.shape_bounds(max_sequence, common)
    ExportMetadata.from_json(common, "export metadata")  # what every reader will check, checked as written

    steps.set_postfix_str("trace vision_par")
    vision_module = cfg.vision_module(reference, budget_mode).eval()
    dummy = cfg.dummy_inputs(reference, query_dim)
    spec = cfg.vision_par
    with dynamic_token_axis(n) if cfg.dynamic_tokens else contextlib.nullcontext():
        trace_onnx(vision_module, dummy, spec, cfg.opset, raw / spec.filename)
    static = {"image_embeds": {1: common["width"], 2: reference.model.config.text_config.hidden_size}}
    finalize_graph(raw / spec.filename, final / spec.filename, {**common, "graph": spec.name}, cfg.fp16, static,
              spec.outputs)
    steps.update()

    query_module = None
    if reference.query_encoder is not None:
        steps.set_postfix_str("trace query_encoder")
        query_module = QueryGraph(reference.query_encoder).eval()
        qspec = cfg.query_encoder
        ids, mask = cfg.query_cases(reference, 2)[-1].feed.values()
        trace_onnx(query_module, (torch.from_numpy(ids), torch.from_numpy(mask)), qspec, cfg.opset, raw / qspec.filename)
        finalize_graph(raw / qspec.filename, final / qspec.filename, {**common, "graph": qspec.name}, cfg.fp16)
    steps.update()

    steps.set_postfix_str("validate")
    precision = "fp16" if cfg.fp16 else "fp32"
    graphs = {}
    if budget_mode == "auto":
        budgets: list = ["auto"]
    elif isinstance(budget_mode, int):
        budgets = [budget_mode]
    else:
        budgets = [b for b in cfg.validation_budgets if b <= common["width"]]
        if len(budgets) < 2:  # a narrow graph: still a K below the width (merging) and the width itself
            budgets = sorted({max(1, common["width"] // 2), *budgets, common["width"]})
    cases = compare_with_torch(vision_module, final / spec.filename, cfg.vision_cases(common, query_dim, budgets),
                               list(spec.outputs), precision=precision)
    graphs["vision_par"] = {**check_graph(final / spec.filename), **summarize(cases, precision, True), "cases": cases}
    if query_module is not None:
        cases = compare_with_torch(query_module, final / cfg.query_encoder.filename, cfg.query_cases(reference),
                                   list(cfg.query_encoder.outputs))
        graphs["query_encoder"] = {**check_graph(final / cfg.query_encoder.filename),
                                   **summarize(cases, precision, False), "cases": cases}
    steps.update()

    _write_runtime_files(final, inputs, reference)
    steps.set_postfix_str("lint")
    lint = {name: [str(w) for w in lint_file(final / f"{name}.onnx")] for name in graphs}
    steps.update()
    report = {"passed": all(g["passed"] for g in graphs.values()), "precision": precision, "graphs": graphs,
              "lint": lint, "metadata": common,
              "skipped_budgets": [b for b in cfg.validation_budgets if isinstance(b, int) and b > common["width"]]
              if cfg.budget_input else []}
    (final / "report.json").write_text(json.dumps(report, indent=2))
    steps.update()
    return report
