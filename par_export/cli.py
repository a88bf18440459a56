"""``par-export`` command line. Each command is a thin call into the library."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from par_export.errors import ParExportError, UsageError
from par_export.models.names import MODEL_HELP


def _budget(text: str):
    """argparse type of ``--budget``: :func:`~par_export.artifact.budget.parse_budget`'s rule."""
    from par_export.artifact.budget import parse_budget
    from par_export.errors import ParExportError

    try:
        return parse_budget(text)
    except ParExportError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _finite(text: str) -> float:
    """argparse type: a finite float >= 0 (NaN or a negative bound would pass every comparison)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _at_least(low: int, high: int | None = None):
    """argparse type: an int >= ``low`` (and <= ``high``): one rule for every count, size and index flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


POSITIVE, NON_NEGATIVE, PORT = _at_least(1), _at_least(0), _at_least(1, 65535)


def cmd_methods(args) -> int:
    from par_export.reduce import authors_methods, available_methods, reducer_class

    print(f"{'method':<14} {'auto K':<6} {'needs':<14} description")
    for name, description in {**available_methods(), **authors_methods()}.items():
        cls = reducer_class(name)
        needs = "prompt|attn" if cls.uses_prompt else ("CLS attn" if cls.needs_attn else "-")
        if cls.tower_inputs:
            needs, description = "tower", f"{description} [eval and the LLaVA-1.5 adapter; does not export]"
        print(f"{name:<14} {'yes' if cls.supports_auto else 'no':<6} {needs:<14} {description}")
    return 0


def cmd_flops(args) -> int:
    from par_export.flops import flops_table, format_flops_table, llava_flops
    from par_export.models.geometries import clip_l14_text, llava_config

    config = llava_config(args.model_config)
    vision = config.vision_config
    full = (vision.image_size // vision.patch_size) ** 2
    for flag, k in (("--budget", args.budget), ("--auto-k", args.auto_k)):
        if k > full:
            raise UsageError(f"{flag} {k}: above the {full} visual tokens of {args.model_config}")
    fixed = sorted({full, 192, 128, 64, args.budget}, reverse=True)
    text_lengths = [16, 64, 256]
    rows = flops_table(config, fixed + [args.auto_k], text_lengths, clip_l14_text())
    labels = (list(map(str, fixed)) + [f"auto~{args.auto_k}"]) * len(text_lengths)
    print(f"{args.model_config} prefill FLOPs (N = {full} visual tokens, CLIP-L/336 tower, reducer with space=clip;")
    print("'auto' is PAR's adaptive K at the mean given by --auto-k; 'LLM saved' covers the LLM only,")
    print("'total saved' the LLM + vision tower + projector + reducer)")
    print(format_flops_table(rows, full, labels))
    print()
    for t in text_lengths:
        row, base = llava_flops(config, args.budget, t, clip_text_config=clip_l14_text()), llava_flops(config, full, t)
        print(f"K={args.budget}, {t} text tokens: LLM {1 - row.llm / base.llm:.1%} fewer FLOPs, "
              f"LLM + vision {1 - row.total / base.total:.1%} fewer")
    print("paper (PAR, LLaVA-1.5-7B, ~64 tokens): 83% fewer FLOPs (parts and text length not stated)")
    return 0


def cmd_reduce(args) -> int:
    import torch

    from par_export.models.geometries import llava_config
    from par_export.plots import kept_token_map, save_kept_maps
    from par_export.reduce import PARConfig, create_reducer
    from par_export.synthetic import planted_scene

    vision = llava_config(args.model_config).vision_config
    side = vision.image_size // vision.patch_size
    scene = planted_scene(args.batch, side, vision.hidden_size, seed=args.seed)
    reducer = create_reducer(args.method, config=PARConfig(k_max=args.k_max))
    with torch.no_grad():
        out = reducer(scene.tokens, scene.prompt_embedding, scene.attn, budget=args.budget)
    n = side * side
    print(f"{args.method} on {args.batch} synthetic {args.model_config} token grids "
          f"[{args.batch}, {n}, {vision.hidden_size}], budget={args.budget}")
    maps, titles = [], []
    for b in range(args.batch):
        k = int(out.num_kept[b])
        kept = out.keep_index[b, :k]
        on_target = int(scene.target[b, kept].sum())
        merged = int((out.assignment[b] >= 0).sum()) - k
        print(f"image {b}: kept {k}/{n} tokens ({k / n:.1%}), {merged} merged into them, "
              f"{n - k - merged} dropped; {on_target}/{int(scene.target[b].sum())} of the prompt's object "
              f"tokens among the kept")
        maps.append(kept_token_map(out, b, side))
        titles.append(f"image {b}: K={k}")
        if args.show_grid:
            for row in maps[-1]:
                print("  " + "".join(".+#"[v] for v in row))
    png = save_kept_maps(Path(args.out) / "kept_tokens.png", maps, titles,
                         [scene.target[b].view(side, side).numpy() for b in range(args.batch)])
    print(f"wrote {png}")
    return 0


def cmd_export(args) -> int:
    from par_export.export import export_model
    from par_export.reduce import PARConfig

    config = PARConfig().with_overrides(args.par)
    if args.k_max:
        config = config.replace(k_max=args.k_max)
    if args.format == "edge-llm":
        from par_export.export.edge_llm import export_edge_llm

        report = export_edge_llm(args.model, args.out, args.method, args.budget, config, args.overwrite, args.opset)
        print(f"visual/model.onnx (TensorRT Edge-LLM 0.11 layout + {args.method}, K={args.budget}): "
              f"{len(report['cases'])} cases, {agreement_summary(report)}: ok")
        print(f"wrote {args.out}/ (visual/model.onnx, visual/config.json, processor/, report.json)")
        return 0
    report = export_model(
        args.model, args.out, method=args.method, budget=args.budget, config=config, clip_path=args.clip,
        opset=args.opset, fp16=args.fp16, batch_max=args.batch_max, overwrite=args.overwrite, plugin=args.plugin,
    )
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


def cmd_inspect(args) -> int:
    from par_export.export.inspect import describe

    print(describe(args.file))
    return 0


def cmd_plugin(args) -> int:
    from par_export.plugins import DEFAULT_ARCHS, build_plugin, plugin_path

    if args.action == "path":
        path = plugin_path()
        print(path)
        return 0 if path.is_file() else 1
    archs = tuple(args.arch) if args.arch else DEFAULT_ARCHS
    print(f"building libpar_plugins.so for sm_{', sm_'.join(archs)} ...", flush=True)
    print(f"wrote {build_plugin(archs, args.out, args.trt_include)}")
    return 0


def _triple(text: str) -> tuple[int, int, int]:
    """``a:b`` (opt = b) or ``a:b:c`` -> (min, opt, max)."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX or MIN:OPT:MAX integers, got {text!r}") from None
    if len(values) == 2:
        values = [values[0], values[1], values[1]]
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= OPT <= MAX, got {text!r}")
    return tuple(values)


def cmd_build(args) -> int:
    from par_export.engine.build import BuildOptions, apply_preset, build, export_source, trtexec_command
    from par_export.engine.verify import format_rows
    from par_export.export.metadata import read_metadata

    batch = None
    if args.min_batch or args.opt_batch or args.max_batch:
        batch = _triple(f"{args.min_batch or 1}:{args.opt_batch or args.min_batch or 1}:{args.max_batch or 8}")
    options = BuildOptions(precision=args.precision, backend=args.backend, target=args.target, batch=batch,
                           budget=args.budget_range, workspace_mib=args.workspace, timing_cache=args.timing_cache,
                           version_compatible=args.version_compatible, dla_core=args.dla_core, plugin=args.plugin,
                           calib_images=args.calib_images, clip=args.clip, atol=args.atol, rtol=args.rtol,
                           par=tuple(args.par))
    if args.calib_images == "demo":  # the procedural VQA scenes the demo model is trained on
        from par_export.data.calibration import demo_scenes

        options.calib_images = demo_scenes()
    source = args.source or args.model
    if source is None:
        raise UsageError("give the exported folder / vision_par.onnx, or --model PATH|tiny")
    if args.print_trtexec:
        import tempfile

        apply_preset(options)
        with tempfile.TemporaryDirectory() as tmp:
            folder = export_source(source, Path(tmp), options, progress=False)
            print(trtexec_command(folder, read_metadata(folder / "vision_par.onnx"), options))
        return 0
    out = args.out or f"engines/{Path(str(source)).name}-{args.precision}"
    manifest = build(source, out, options, overwrite=args.overwrite)
    print(f"built {manifest.backend} {manifest.precision} artifact in {out}/ (manifest.json)")
    result = manifest.verification
    print(format_rows(result["rows"]))
    print(f"verify ({result['precision']}): {'PASSED' if result['passed'] else 'FAILED'}")
    if not result["passed"]:
        print("the artifact is marked unverified in its manifest: run/chat/emit/eval refuse it without "
              "--allow-unverified", file=sys.stderr)
    return 0 if result["passed"] else 1


def agreement_summary(graph: dict) -> str:
    """One line of an export validation summary (``validate.summarize``)."""
    if "min_index_agreement" not in graph:
        return (f"max abs error {graph['max_abs_error']:.2e} (<= {graph['error_limit']:.2g}; "
                f"outputs up to {graph['reference_max_abs']:.2e})")
    ties = "" if graph["tied_tokens"] is None else f", {graph['tied_tokens']} near-tied tokens"
    return (f"max abs error {graph['shared_max_abs_error']:.2e} on the shared kept tokens (<= "
            f"{graph['error_limit']:.2g}; outputs up to {graph['reference_max_abs']:.2e}), min cosine "
            f"{graph['min_cosine']:.6f}, kept-index agreement {graph['min_index_agreement']:.2%}{ties}")


PAR_GRAPH = "unset options keep PARConfig's defaults (docs/par.md); all are recorded in the graph's metadata"
PAR_QUERY = ("only rewrite and template (the prompt rewrite, before the query encoder): the artifact's graph fixed "
             "the other options at export")


def add_par(parser: argparse.ArgumentParser, note: str) -> None:
    """``--par NAME=VALUE`` (repeatable), one spelling for every subcommand that reduces."""
    parser.add_argument("--par", action="append", default=[], metavar="NAME=VALUE",
                        help=f"PAR option to override (repeatable), e.g. --par alpha=0.5 --par tau=1.0; {note}")


def cmd_verify(args) -> int:
    from par_export.engine.verify import format_rows, record_verification, verification_record, verify

    rows, passed, precision = verify(args.artifact, count=args.n, atol=args.atol, rtol=args.rtol)
    record_verification(args.artifact, verification_record(rows, passed, precision))
    print(format_rows(rows))
    print(f"verify ({precision}): {'PASSED' if passed else 'FAILED'} (recorded in {Path(args.artifact) / 'manifest.json'})")
    return 0 if passed else 1


def cmd_run(args) -> int:
    from par_export.engine.run import run_image

    heatmap = args.heatmap or "kept_tokens.png"  # never inside the sealed artifact
    result = run_image(args.artifact, args.image, args.prompt, args.budget, heatmap, args.allow_unverified, args.par,
                       args.repeat)
    print(f"query: {result['query']!r}")
    print(f"kept {result['num_kept']}/{result['tokens_per_image']} tokens "
          f"({result['backend']} {result['precision']}); first kept indices {result['keep_index'][:12]}")
    print(f"image_embeds [{result['num_kept']}, {result['image_embeds'].shape[-1]}], first values "
          f"{[round(float(v), 4) for v in result['image_embeds'][0, :6]]}")
    rounds = f"median of {args.repeat} calls after a warm-up" if args.repeat else "one cold call"
    print(f"timings ({result['backend']} {result['precision']}, {rounds}, {os.cpu_count()} CPU cores, load "
          f"{os.getloadavg()[0]:.2f}):")
    for name, ms in result["timings_ms"].items():
        print(f"  {name}: {ms:.2f} ms")
    print(f"wrote {heatmap}" if result["heatmap"] else "no heatmap for this model family yet")
    return 0


def _budgets(text: str) -> list:
    try:
        return [_budget(b) for b in text.split(",") if b]
    except argparse.ArgumentTypeError as err:
        raise UsageError(f"--budgets: {err}") from None


def cmd_eval(args) -> int:
    import tempfile

    from par_export.eval.vqa import (
        artifact_budgets,
        build_eval_artifacts,
        evaluate,
        evaluate_jsonl,
        format_rows,
        result_rows,
        write_outputs,
    )
    from par_export.files import check_out, check_replaceable
    from par_export.models.names import resolve_model
    from par_export.reduce import PARConfig

    if bool(args.data) != bool(args.images):
        raise UsageError("--data FILE.jsonl and --images DIR go together")
    inputs = [p for p in (args.model, args.clip, args.data, args.images) if p]
    sealed = [args.backend] if args.backend not in ("torch", "onnxruntime") else []  # an artifact
    # before the evaluation, not after it
    check_replaceable(check_out(args.out, inputs, sealed), args.overwrite, UsageError)
    with tempfile.TemporaryDirectory() as tmp:
        llava_dir, clip_dir = resolve_model(args.model, Path(tmp))
        methods, budgets = args.methods.split(","), _budgets(args.budgets)
        # one meaning of --par, --backend, --methods and --budgets for the procedural split and JSONL
        config, artifacts = PARConfig().with_overrides(args.par), None
        if args.backend == "onnxruntime":
            artifacts = build_eval_artifacts(llava_dir, args.clip or clip_dir, methods, budgets,
                                             Path(tmp) / "artifacts", config)
        elif args.backend != "torch":
            if not Path(args.backend).is_dir():
                raise UsageError(f"--backend {args.backend!r}: expected torch, onnxruntime or a "
                                 "`par-export build` folder")
            method, artifacts = artifact_budgets(Path(args.backend), budgets)
            methods, budgets = [method], [budget for _, budget in artifacts]
        if args.data:
            results = evaluate_jsonl(llava_dir, args.clip or clip_dir, Path(args.data), Path(args.images), methods,
                                     budgets, config=config, batch=min(args.batch, 8), artifacts=artifacts,
                                     allow_unverified=args.allow_unverified)
            print(f"{results['records']} records; skipped: {results['skipped'] or 'none'}")
        else:
            results = evaluate(llava_dir, args.clip or clip_dir, methods, budgets, split=args.split, n=args.n,
                               batch=args.batch, config=config, artifacts=artifacts,
                               allow_unverified=args.allow_unverified)
    rows = result_rows(results)
    print(format_rows(rows))
    for path in write_outputs(rows, results, Path(args.out), args.overwrite, inputs, sealed):
        print(f"wrote {path}")
    return 0


def cmd_chat(args) -> int:
    from par_export.runtime.chat import chat, format_chat

    result = chat(args.model, args.image, args.prompt, args.method, args.budget, args.artifact, args.compare_full,
                  args.max_new_tokens, args.llm, args.allow_unverified, args.par, args.repeat)
    if args.json:
        import json
        import platform

        print(json.dumps({**result, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                          f"load {os.getloadavg()[0]:.2f}"}, indent=2))
        return 0
    print(format_chat(result))
    print(f"(measured on this machine's CPU, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")
    return 0


def cmd_emit(args) -> int:
    import tempfile

    from par_export.models.families import family_for
    from par_export.models.names import resolve_model
    from par_export.processing import open_image
    from par_export.runtime.emit import emit, write_emitted
    from par_export.runtime.pipeline import VisionLanguagePipeline

    picture = open_image(args.image)
    with tempfile.TemporaryDirectory() as tmp:
        llava_dir, _ = resolve_model(args.model, Path(tmp))
        family = family_for(llava_dir)
        model, tokenizer = family.load_model(llava_dir), family.inputs(llava_dir).tokenizer
    pipe = VisionLanguagePipeline(args.artifact, model, tokenizer, allow_unverified=args.allow_unverified)
    pixels = pipe.inputs.pixel_values([picture])
    arrays, meta = emit(pipe, pixels, args.prompt, args.runtime, args.budget)
    print(f"{args.runtime}: K = {meta['num_kept']} visual rows of {meta['hidden_size']}, "
          f"{len(arrays['input_ids'])} prompt ids")
    for path in write_emitted(args.out, arrays, meta, args.overwrite, inputs=[args.artifact, args.image],
                              artifact=args.artifact):
        print(f"wrote {path}")
    return 0


def cmd_triton_repo(args) -> int:
    from par_export.serving.triton import write_triton_repo

    for path in write_triton_repo(args.source, args.out, args.overwrite):
        print(f"wrote {path}")
    return 0


def cmd_serve(args) -> int:
    from par_export.serving.server import ServeOptions, serve

    options = ServeOptions(http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                           max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
                           instances=args.instances, allow_unverified=args.allow_unverified,
                           tritonserver=args.tritonserver)
    return serve(args.artifact, options)


OVERWRITE = "replace --out if it exists (only a folder par-export wrote, or an empty one)"
ARTIFACT = "a `par-export build` folder"
UNVERIFIED = "use an artifact whose verification failed or never ran (refused by default)"


def _pool_limit(text: str) -> int:
    """Polygraphy's ``--pool-limit workspace:SIZE`` (SIZE in bytes, or with K/M/G) -> MiB."""
    pool, _, size = text.partition(":")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        scale = units.get(size[-1:].upper(), 1)
        value = int(float(size[:-1] if size[-1:].upper() in units else size) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected workspace:SIZE (e.g. workspace:4G), got {text!r}") from None
    if pool != "workspace" or value < 1 << 20:
        raise argparse.ArgumentTypeError(f"expected workspace:SIZE of at least 1M, got {text!r}")
    return value >> 20


def add_tolerances(p: argparse.ArgumentParser) -> None:
    p.add_argument("--atol", type=_finite, help="verification: absolute error bound (default: the precision's)")
    p.add_argument("--rtol", type=_finite, help="verification: error bound relative to the largest reference "
                   "output (default: the precision's)")


def add_device(p: argparse.ArgumentParser) -> None:
    from par_export.backends.onnxruntime import PROVIDERS

    p.add_argument("--device", choices=list(PROVIDERS), default="cpu",
                   help="ONNX Runtime execution provider for ONNX Runtime artifacts: CPU, CUDA or TensorRT "
                   "(cuda/tensorrt need par-export[gpu])")


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an argument's help where X is a real value the help does not state."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block is one ``--help`` away) and defaults in help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from par_export import __version__
    from par_export.engine.presets import PRECISIONS, available_presets
    from par_export.models.geometries import LLAVA_GEOMETRIES
    from par_export.reduce import authors_methods, available_methods

    methods = sorted(available_methods())
    parser = _Parser(prog="par-export", description=__doc__)
    parser.add_argument("--version", action="version", version=f"par-export {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list the registered token reducers")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("flops", help="prefill FLOPs of a published LLaVA geometry at several budgets")
    p.add_argument("--model-config", default="llava-1.5-7b", choices=sorted(LLAVA_GEOMETRIES),
                   help="published LLaVA geometry")
    p.add_argument("--budget", type=POSITIVE, default=64, help="K to summarize against the paper's figure")
    p.add_argument("--auto-k", type=POSITIVE, default=64, help="mean K of PAR's adaptive budget for the 'auto' row")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("reduce", help="reduce synthetic LLaVA-geometry tokens with planted objects; print what was kept")
    p.add_argument("--model-config", default="llava-1.5-7b", choices=sorted(LLAVA_GEOMETRIES),
                   help="geometry of the synthetic tokens (N, D)")
    p.add_argument("--method", default="par", choices=methods, help="token reducer")
    p.add_argument("--budget", type=_budget, default="auto", help="K, or 'auto' (adaptive)")
    p.add_argument("--k-max", type=POSITIVE, default=192, help="adaptive K upper bound (PARConfig.k_max)")
    p.add_argument("--batch", type=POSITIVE, default=2, help="synthetic images")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the synthetic scenes")
    p.add_argument("--out", default="out", help="folder for kept_tokens.png")
    p.add_argument("--show-grid", action="store_true", help="print each image's kept map (# kept, + merged, . dropped)")
    p.set_defaults(func=cmd_reduce)

    p = sub.add_parser("export", help="export vision tower + projector + reducer to validated ONNX")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--method", default="par", choices=methods, help="token reducer (`par-export methods`)")
    p.add_argument("--budget", type=_budget, default="auto", help="'auto' (adaptive K, no budget input) or an int "
                   "K: the graph then takes K as a 0-d int64 input up to --k-max")
    p.add_argument("--k-max", type=POSITIVE, default=None, help="largest K and the padded output width (default 192)")
    add_par(p, PAR_GRAPH)
    p.add_argument("--clip", default=None, help="local CLIP folder for space=clip (default: llm space)")
    p.add_argument("--opset", type=_at_least(13), default=17, help="ONNX opset (default 17)")
    p.add_argument("--fp16", action="store_true", help="fp16 graph; reducer, norms and softmax stay fp32")
    p.add_argument("--batch-max", type=POSITIVE, default=8, help="largest batch the graphs are validated "
                   "and bounded for (default 8)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    p.add_argument("--plugin", action="store_true", help="emit PAR's top-k clustering as one par::TopKCluster node "
                   "(TensorRT: libpar_plugins.so; ONNX Runtime: onnxruntime-extensions Python op)")
    p.add_argument("--format", choices=["onnx", "edge-llm"], default="onnx",
                   help="onnx (default): vision_par.onnx + query_encoder.onnx; edge-llm: Qwen2.5-VL's "
                   "visual/model.onnx in TensorRT Edge-LLM 0.11's input layout, PAR inside (fixed --budget)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build", help="build a TensorRT engine (or the ONNX Runtime form) and verify it")
    p.add_argument("source", nargs="?", help="export folder or its vision_par.onnx")
    p.add_argument("--model", help="instead of SOURCE, exported first: " + MODEL_HELP)
    p.add_argument("--clip", help="with --model PATH: local CLIP folder for space=clip (default: llm space)")
    add_par(p, "with --model (exported first) only; " + PAR_GRAPH)
    p.add_argument("--out", help="artifact folder (default engines/<model>-<precision>)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--precision", default="fp16", choices=list(PRECISIONS),
                           help="engine precision (as trtexec/Polygraphy spell it: --fp16, --int8, ...)")
    for name in PRECISIONS:
        precision.add_argument(f"--{name}", dest="precision", action="store_const", const=name,
                               help=f"same as --precision {name}")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime"],
                   help="auto: TensorRT where it imports, else the ONNX Runtime form")
    p.add_argument("--target", choices=available_presets(), help="device preset (precision, profiles, workspace, DLA)")
    p.add_argument("--min-batch", type=POSITIVE, help="optimization profile: smallest batch (default 1)")
    p.add_argument("--opt-batch", type=POSITIVE, help="optimization profile: batch tuned for (default min)")
    p.add_argument("--max-batch", type=POSITIVE, help="optimization profile: largest batch (default 8)")
    p.add_argument("--budget-range", type=_triple, help="MIN:MAX or MIN:OPT:MAX kept tokens")
    p.add_argument("--workspace", type=POSITIVE, help="TensorRT workspace memory pool in MiB")
    p.add_argument("--pool-limit", type=_pool_limit, dest="workspace", metavar="workspace:SIZE",
                   help="Polygraphy's spelling of --workspace: workspace:4G, workspace:512M, workspace:BYTES")
    p.add_argument("--timing-cache", "--load-timing-cache", "--save-timing-cache", dest="timing_cache",
                   help="TensorRT timing cache file, read and updated (Polygraphy's two spellings alias it)")
    p.add_argument("--version-compatible", action="store_true",
                   help="engine runs on later TensorRT versions of the same major (lean runtime)")
    p.add_argument("--dla-core", "--useDLACore", type=NON_NEGATIVE, dest="dla_core",
                   help="build for this DLA core, with GPU fallback (Jetson; trtexec: --useDLACore)")
    p.add_argument("--plugin", action="store_true", help="export with the par::TopKCluster custom op")
    p.add_argument("--calib-images", help="folder of images (or 'demo': the procedural VQA scenes) for TensorRT int8/fp8 "
                   "calibration (ModelOpt Q/DQ)")
    p.add_argument("--print-trtexec", action="store_true", help="print the equivalent trtexec command and exit")
    add_tolerances(p)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("verify", help="compare a built artifact with PyTorch and the fp32 ONNX graph")
    p.add_argument("artifact", help=ARTIFACT)
    p.add_argument("-n", type=_at_least(1, 1000), default=3, help="number of inputs (batch sizes cycle 1, 2, 4)")
    add_tolerances(p)
    add_device(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("run", help="one image + prompt through a built artifact; kept tokens as a PNG")
    p.add_argument("artifact", help=ARTIFACT)
    p.add_argument("--image", required=True, help="image file (PNG, JPEG, ...)")
    p.add_argument("--prompt", required=True, help="the question the image is reduced for")
    p.add_argument("--budget", type=_budget, help="K, or 'auto' for an artifact exported with --budget auto "
                   "(default: the artifact's)")
    add_device(p)
    p.add_argument("--heatmap", help="PNG path (default ./kept_tokens.png; never inside the sealed artifact)")
    p.add_argument("--repeat", type=NON_NEGATIVE, default=3, help="timed calls of each graph after a warm-up "
                   "(median and min shown; 0: one cold call; default 3)")
    add_par(p, PAR_QUERY)
    p.add_argument("--allow-unverified", action="store_true", help=UNVERIFIED)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="accuracy vs kept tokens per method on the demo VQA (CSV, JSON, PNG)")
    p.add_argument("--model", default="demo", help=MODEL_HELP + "; the procedural VQA needs a model trained on it "
                   "(demo)")
    p.add_argument("--clip", help="local CLIP folder for space=clip (demo: shipped)")
    p.add_argument("--methods", default="par,random,pool,cls_attn,visionzip_mean,prumerge_mean,text_sim",
                   help="comma-separated reducers, of: " + ", ".join(methods) + " and the authors' forms " +
                   ", ".join(sorted(authors_methods())) + ", and dart (DART inside the LLM; dart:layer=L); "
                   "NAME:OPT=VALUE[:...] overrides PAR options for one entry (ablations: par:router=keep,par:beta=1.0)")
    p.add_argument("--budgets", default="4,8,16,32,64,128,auto", help="comma-separated K values and/or 'auto'")
    p.add_argument("--backend", default="torch", help="reduce with PyTorch ('torch'), with every method exported "
                   "and built for ONNX Runtime ('onnxruntime'), or with one `par-export build` folder (its method "
                   "and the budgets it serves); the LLM answers in PyTorch")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="procedural VQA split")
    p.add_argument("--n", type=POSITIVE, default=2000, help="questions to score")
    p.add_argument("--batch", type=POSITIVE, default=50, help="questions per forward pass")
    p.add_argument("--data", help="LLaVA-style JSONL (question_id, image, text, answer) instead of the demo VQA")
    p.add_argument("--images", help="folder of the JSONL's images")
    add_par(p, PAR_GRAPH)
    p.add_argument("--out", default="out/eval", help="results folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    p.add_argument("--allow-unverified", action="store_true", help=UNVERIFIED)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("chat", help="answer one image + prompt with the reduced context (timings vs full)")
    p.add_argument("--model", default="tiny", help=MODEL_HELP)
    p.add_argument("--image", required=True, help="image file (PNG, JPEG, ...)")
    p.add_argument("--prompt", required=True, help="the question")
    p.add_argument("--method", default="par", choices=methods, help="token reducer")
    p.add_argument("--budget", type=_budget, help="K, or 'auto' (adaptive); default: 'auto' when chat exports "
                   "the graph itself, the artifact's with --artifact")
    p.add_argument("--artifact", help="a `par-export build` folder (default: export + build into a temp folder)")
    add_par(p, PAR_GRAPH + "; with --artifact, " + PAR_QUERY)
    add_device(p)
    p.add_argument("--compare-full", action="store_true", help="also answer with the full visual context")
    p.add_argument("--max-new-tokens", type=POSITIVE, default=16, help="tokens to generate")
    p.add_argument("--repeat", type=POSITIVE, default=3, help="timed rounds after one warm-up, interleaved across "
                   "rows; the table shows the median (default 3)")
    p.add_argument("--json", action="store_true", help="print the answers and timings as JSON instead of a table")
    p.add_argument("--llm", default="transformers", choices=["transformers", "onnxruntime-genai", "onnxruntime"],
                   help="generate with transformers, or with the LLM exported to ONNX (KV cache) and run by "
                   "onnxruntime-genai or by a greedy loop over ONNX Runtime")
    p.add_argument("--allow-unverified", action="store_true", help=UNVERIFIED)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("emit", help="reduced visual embeddings + prompt ids in the layout TensorRT-LLM or "
                       "Edge-LLM takes (safetensors + JSON)")
    p.add_argument("artifact", help=ARTIFACT)
    add_device(p)
    p.add_argument("--model", default="tiny", help="the model the artifact was exported "
                   "from: " + MODEL_HELP)
    p.add_argument("--image", required=True, help="image file (PNG, JPEG, ...)")
    p.add_argument("--prompt", required=True, help="prompt with one <image> placeholder, in the LLM's chat format")
    p.add_argument("--runtime", required=True, choices=["tensorrt-llm", "edge-llm"], help="layout to write")
    p.add_argument("--budget", type=_budget, help="K, or 'auto' for an artifact exported with --budget auto "
                   "(default: the artifact's)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    p.add_argument("--allow-unverified", action="store_true", help=UNVERIFIED)
    p.set_defaults(func=cmd_emit)

    p = sub.add_parser("triton-repo", help="write a Triton Inference Server model repository for an export")
    p.add_argument("source", help="`par-export export` folder")
    p.add_argument("--out", required=True, help="model repository folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    p.set_defaults(func=cmd_triton_repo)

    p = sub.add_parser("serve", help="serve an artifact from a Triton Inference Server (dynamic batching) until "
                       "SIGTERM/SIGINT", description="Model 'par_reduce': prompt (or input_ids) + image (or "
                       "pixel_values) [+ budget] in; image_embeds, num_kept, keep_index out. Needs "
                       "par-export[serve] (docs/serving.md).")
    p.add_argument("artifact", help=ARTIFACT)
    p.add_argument("--http-port", type=PORT, default=8000, help="HTTP/REST port (default 8000)")
    p.add_argument("--grpc-port", type=PORT, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=PORT, default=8002, help="Prometheus metrics port (default 8002)")
    p.add_argument("--max-batch", type=POSITIVE, default=8, help="largest batch of images the dynamic batcher "
                   "forms (Triton's max_batch_size, default 8)")
    p.add_argument("--max-queue-delay-us", type=NON_NEGATIVE, default=2000, help="how long the batcher waits to "
                   "fill a batch, microseconds (default 2000)")
    p.add_argument("--instances", type=POSITIVE, default=1, help="model instances, each its own process and "
                   "sessions (default 1)")
    p.add_argument("--tritonserver", help="a tritonserver binary with its backends beside it (default: the one "
                   "nvidia-pytriton ships)")
    p.add_argument("--allow-unverified", action="store_true", help=UNVERIFIED)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("plugin", help="build libpar_plugins.so (TensorRT plugins) or print its path")
    p.add_argument("action", choices=["build", "path"], help="build the library, or print where it is looked for")
    p.add_argument("--arch", action="append", help="SM version without 'sm_', repeatable (default 80 87 89 90 110)")
    p.add_argument("--out", default=None, help="output folder (default $PAR_PLUGIN_DIR, else $XDG_CACHE_HOME/par-export/plugins)")
    p.add_argument("--trt-include", default=None, help="folder holding NvInfer.h")
    p.set_defaults(func=cmd_plugin)

    p = sub.add_parser("inspect", help="print an exported graph's metadata, inputs and outputs")
    p.add_argument("file", help="an .onnx file")
    p.set_defaults(func=cmd_inspect)
    return parser


def configure_logging(verbose: bool, quiet: bool) -> None:
    """Library messages (logger ``par_export``) to stderr: INFO by default, DEBUG with -v, WARNING with -q;
    Python warnings are shown (through logging)."""
    import logging

    class StderrHandler(logging.StreamHandler):
        """Writes to ``sys.stderr`` as it is when a message comes (tests and embedding code swap it)."""

        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, _):
            pass

    logger = logging.getLogger("par_export")
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if not logger.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logging.captureWarnings(True)


# Optional dependencies and the extra that installs each.
EXTRAS = {"onnxruntime": "cpu] or [gpu", "onnxruntime_genai": "cpu] or [gpu", "tensorrt": "tensorrt",
          "tritonclient": "test"}


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that bad input causes: ours (:class:`~par_export.errors.ParExportError`: ExportError,
    BuildError, ArtifactError, InputError, ...), OS errors, and those the libraries that read the
    user's files raise for a corrupt one (ONNX Runtime, protobuf, the ONNX checker, safetensors, PIL),
    where already imported. Anything else is a programming error."""
    errors: list[type[BaseException]] = [ParExportError, OSError]
    modules = {"onnxruntime.capi.onnxruntime_pybind11_state": ("Fail", "InvalidArgument", "NoSuchFile", "NoModel",
                                                               "InvalidProtobuf", "InvalidGraph", "RuntimeException",
                                                               "EngineError", "NotImplemented", "EPFail"),
               "google.protobuf.message": ("Error",), "onnx.checker": ("ValidationError",),
               "safetensors": ("SafetensorError",), "PIL.Image": ("DecompressionBombError",)}
    for module, names in modules.items():
        if module in sys.modules:
            errors += [getattr(sys.modules[module], n) for n in names if hasattr(sys.modules[module], n)]
    return tuple(errors)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 600 else text[:600] + " ..."


def main(argv: list[str] | None = None) -> int:
    """The ``par-export`` command: exit 0 on success, 1 when a verification fails, 2 with one line
    ``par-export CMD: error: ...`` for bad input (argparse's own errors too), 3 for an internal
    error (one line; ``--debug`` shows its traceback), 130 when interrupted."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        from par_export.backends.onnxruntime import set_device

        set_device(getattr(args, "device", "cpu"))  # every call starts from its own --device
        return args.func(args)
    except KeyboardInterrupt:
        print(f"par-export {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        if isinstance(err, ModuleNotFoundError) and err.name and err.name.split(".")[0] in EXTRAS:
            extra = EXTRAS[err.name.split(".")[0]]
            print(f"par-export {args.command}: error: {err.name} is not installed; install it with "
                  f"pip install 'par-export[{extra}]'", file=sys.stderr)
            return 2
        if isinstance(err, user_errors()):
            print(f"par-export {args.command}: error: {_one_line(err)}", file=sys.stderr)
            return 2
        print(f"par-export {args.command}: internal error: {type(err).__name__}: {_one_line(err)} (rerun with "
              "--debug for the traceback, and please report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
