"""``export_model``: model folder -> validated ``vision_par.onnx`` + ``query_encoder.onnx``."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import onnx
import torch
from tqdm.auto import tqdm

import par_export
from par_export.artifact.budget import Budget
from par_export.artifact.metadata import VERSION as METADATA_VERSION
from par_export.artifact.metadata import ExportMetadata
from par_export.errors import ParExportError
from par_export.export.custom_op import DOMAIN, OP_TYPE, VERSION, topk_cluster_node
from par_export.export.fp16 import to_fp16
from par_export.export.lint import lint_file
from par_export.export.metadata import set_metadata
from par_export.export.onnx_io import save_onnx
from par_export.export.validate import check_graph, compare_with_torch, summarize, validation_failure
from par_export.files import atomic_folder
from par_export.models.families import family_for
from par_export.models.graphs import QueryGraph
from par_export.models.names import TINY_RECORD, display_name, recorded, resolve_model
from par_export.models.onnx_config import DEFAULT_OPSET, GraphSpec, VisionParOnnxConfig
from par_export.reduce import PARConfig, reducer_class
from par_export.reduce.checks import dynamic_token_axis


class ExportError(ParExportError):
    """An export that could not be completed or did not validate; nothing was written."""


def _export(module: torch.nn.Module, args: tuple, spec: GraphSpec, opset: int, path: Path) -> None:
    with warnings.catch_warnings():
        # Only the tracer's chatter about python scalars of static shapes (they are static here by
        # design) and the notice that this is the TorchScript exporter (chosen, docs/export.md);
        # every other warning is shown.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset, input_names=list(spec.inputs),
            output_names=list(spec.outputs), dynamic_axes=spec.dynamic_axes, do_constant_folding=True,
        )


def _finalize(raw: Path, final: Path, metadata: dict, fp16: bool, static_dims: dict | None = None,
              output_names: tuple[str, ...] = ()) -> None:
    """Add metadata (and convert to fp16), re-save; weights go to ``<name>.onnx.data`` when large.

    ``static_dims`` = ``{output: {axis: size}}`` pins output axes the tracer left symbolic.
    ``output_names``: the declared names; an output the exporter folded into a constant (and
    renamed) gets its name back through an Identity node.
    """
    model = onnx.load(str(raw))
    for value, name in zip(model.graph.output, output_names):
        if value.name != name:
            model.graph.node.append(onnx.helper.make_node("Identity", [value.name], [name], name=f"/{name}/Identity"))
            value.name = name
    if fp16:
        model = to_fp16(model)
    for value in model.graph.output:
        for axis, size in (static_dims or {}).get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_value = size
    set_metadata(model, metadata)
    save_onnx(model, final)


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
) -> dict:
    """Export, validate and lint; returns the report (also written to ``out/report.json``).

    Raises :class:`ExportError` (nothing written) when an input is bad or a graph
    fails validation. ``out`` must not exist unless ``overwrite``. ``plugin`` emits
    PAR's steps 5-6 as one ``par::TopKCluster`` node instead of standard ops.
    """
    out = Path(out)
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
    cfg = VisionParOnnxConfig(budget_input=budget_mode == "input", opset=opset, batch_max=batch_max, fp16=fp16)
    with atomic_folder(out, overwrite, ExportError, inputs=[p for p in (model, clip_path) if p]) as (final, work):
        report = _export_into(work, final, model, method, budget, budget_mode, config, clip_path, cfg, progress,
                              plugin)
        if not report["passed"]:
            raise validation_failure(report["graphs"], ExportError)
    return report


def _export_into(work: Path, final: Path, model, method, budget, budget_mode, config, clip_path,
                 options: VisionParOnnxConfig, progress: bool, plugin: bool) -> dict:
    # leave=False and a close on any exit: an error line is never drawn over by the bar
    with tqdm(total=6, desc="export", disable=not progress, unit="step", leave=False) as steps:
        return _export_steps(steps, work, final, model, method, budget, budget_mode, config, clip_path, options,
                             plugin)


def _export_steps(steps, work: Path, final: Path, model, method, budget, budget_mode, config, clip_path,
                  options: VisionParOnnxConfig, plugin: bool) -> dict:
    steps.set_postfix_str("load")
    llava_dir, tiny_clip = resolve_model(model, work)
    family = family_for(llava_dir)
    if family.onnx_config is None:
        raise ExportError(f"{llava_dir}: {family.name} runs with PAR in PyTorch ({family.adapter.__name__}), "
                          "but its ONNX export is not supported yet")
    inputs = family.inputs(llava_dir)  # refuse a folder without its processor before any work
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
        "image_size": getattr(vision_cfg, "image_size", None),  # None: dynamic resolution (Qwen2.5-VL)
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
        _export(vision_module, dummy, spec, cfg.opset, raw / spec.filename)
    static = {"image_embeds": {1: common["width"], 2: reference.model.config.text_config.hidden_size}}
    _finalize(raw / spec.filename, final / spec.filename, {**common, "graph": spec.name}, cfg.fp16, static,
              spec.outputs)
    steps.update()

    query_module = None
    if reference.query_encoder is not None:
        steps.set_postfix_str("trace query_encoder")
        query_module = QueryGraph(reference.query_encoder).eval()
        qspec = cfg.query_encoder
        ids, mask = cfg.query_cases(reference, 2)[-1].feed.values()
        _export(query_module, (torch.from_numpy(ids), torch.from_numpy(mask)), qspec, cfg.opset, raw / qspec.filename)
        _finalize(raw / qspec.filename, final / qspec.filename, {**common, "graph": qspec.name}, cfg.fp16)
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
