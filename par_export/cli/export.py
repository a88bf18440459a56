"""``par-export export``, ``inspect`` and ``plugin``: ONNX graphs and the TensorRT plugin library."""

from __future__ import annotations

import argparse

from par_export.cli.args import OVERWRITE, PAR_GRAPH, POSITIVE, add_par, at_least, budget
from par_export.export import export_model
from par_export.export.exporter import FORMATS
from par_export.export.inspect import describe
from par_export.files import check_out
from par_export.models.names import MODEL_HELP
from par_export.plugins import DEFAULT_ARCHS, build_plugin, plugin_path
from par_export.reduce import PARConfig, available_methods


def cmd_export(args) -> int:
    config = PARConfig().with_overrides(args.par)
    if args.k_max:
        config = config.replace(k_max=args.k_max)
    report = export_model(
        args.model, args.out, method=args.method, budget=args.budget, config=config, clip_path=args.clip,
        opset=args.opset, fp16=args.fp16, batch_max=args.batch_max, overwrite=args.overwrite, plugin=args.plugin,
        format=args.format,
    )
    if args.format == "edge-llm":
        print(f"visual/model.onnx (TensorRT Edge-LLM 0.11 layout + {args.method}, K={args.budget}): "
              f"{len(report['cases'])} cases, {agreement_summary(report)}: ok")
        print(f"wrote {args.out}/ (visual/model.onnx, visual/config.json, processor/, report.json)")
        return 0
    print(f"validation ({report['precision']}, ONNX Runtime CPU vs PyTorch):")
    for name, graph in report["graphs"].items():
        print(f"  {name}.onnx: {len(graph['cases'])} cases, {agreement_summary(graph)}: "
              f"{'ok' if graph['passed'] else 'FAILED'}")
    for name, warnings in report["lint"].items():
        for warning in warnings:
            print(f"  TensorRT lint {name}.onnx: {warning}")
    if report["skipped_budgets"]:
        print(f"  budgets {report['skipped_budgets']} not validated: above the graph's width {report['metadata']['width']}")
    print(f"wrote {args.out}/ (vision_par.onnx, query_encoder.onnx, report.json)")
    return 0


def agreement_summary(graph: dict) -> str:
    """One line of an export validation summary (``validate.summarize``)."""
    if "min_index_agreement" not in graph:
        return (f"max abs error {graph['max_abs_error']:.2e} (<= {graph['error_limit']:.2g}; "
                f"outputs up to {graph['reference_max_abs']:.2e})")
    ties = "" if graph["tied_tokens"] is None else f", {graph['tied_tokens']} near-tied tokens"
    return (f"max abs error {graph['shared_max_abs_error']:.2e} on the shared kept tokens (<= "
            f"{graph['error_limit']:.2g}; outputs up to {graph['reference_max_abs']:.2e}), min cosine "
            f"{graph['min_cosine']:.6f}, kept-index agreement {graph['min_index_agreement']:.2%}{ties}")


def cmd_inspect(args) -> int:
    print(describe(args.file))
    return 0


def cmd_plugin(args) -> int:
    if args.action == "path":
        path = plugin_path()
        print(path)
        return 0 if path.is_file() else 1
    archs = tuple(args.arch) if args.arch else DEFAULT_ARCHS
    out = check_out(args.out) if args.out is not None else None  # refused before the progress line
    print(f"building libpar_plugins.so for sm_{', sm_'.join(archs)} ...", flush=True)
    print(f"wrote {build_plugin(archs, out, args.trt_include)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    methods = sorted(available_methods())

    p = sub.add_parser("export", help="export vision tower + projector + reducer to validated ONNX")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--method", default="par", choices=methods, help="token reducer (`par-export methods`)")
    p.add_argument("--budget", type=budget, default="auto", help="'auto' (adaptive K, no budget input) or an int "
                   "K: the graph then takes K as a 0-d int64 input up to --k-max")
    p.add_argument("--k-max", type=POSITIVE, default=None, help="largest K and the padded output width (default 192)")
    add_par(p, PAR_GRAPH)
    p.add_argument("--clip", default=None, help="local CLIP folder for space=clip (default: llm space)")
    p.add_argument("--opset", type=at_least(13), default=17, help="ONNX opset (default 17)")
    p.add_argument("--fp16", action="store_true", help="fp16 graph; reducer, norms and softmax stay fp32")
    p.add_argument("--batch-max", type=POSITIVE, default=8, help="largest batch the graphs are validated "
                   "and bounded for (default 8)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    p.add_argument("--plugin", action="store_true", help="emit PAR's top-k clustering as one par::TopKCluster node "
                   "(TensorRT: libpar_plugins.so; ONNX Runtime: onnxruntime-extensions Python op)")
    p.add_argument("--format", choices=list(FORMATS), default="onnx",
                   help="onnx (default): vision_par.onnx + query_encoder.onnx; edge-llm: Qwen2.5-VL's "
                   "visual/model.onnx in TensorRT Edge-LLM 0.11's input layout, PAR inside (fixed --budget)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plugin", help="build libpar_plugins.so (TensorRT plugins) or print its path")
    p.add_argument("action", choices=["build", "path"], help="build the library, or print where it is looked for")
    p.add_argument("--arch", action="append", help="SM version without 'sm_', repeatable (default 80 87 89 90 110)")
    p.add_argument("--out", default=None, help="output folder (default $PAR_PLUGIN_DIR, else $XDG_CACHE_HOME/par-export/plugins)")
    p.add_argument("--trt-include", default=None, help="folder holding NvInfer.h")
    p.set_defaults(func=cmd_plugin)

    p = sub.add_parser("inspect", help="print an exported graph's metadata, inputs and outputs")
    p.add_argument("file", help="an .onnx file")
    p.set_defaults(func=cmd_inspect)
