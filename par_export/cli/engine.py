"""``par-export build``, ``verify`` and ``run``: an artifact made, checked and run."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from par_export.artifact.manifest import PRECISIONS
from par_export.artifact.query import check_prompt
from par_export.cli.args import (
    ARTIFACT,
    NON_NEGATIVE,
    OVERWRITE,
    PAR_GRAPH,
    PAR_QUERY,
    POSITIVE,
    UNVERIFIED,
    add_device,
    add_par,
    add_tolerances,
    at_least,
    budget,
    pool_limit,
    triple,
)
from par_export.data.calibration import demo_scenes
from par_export.engine.build import BuildOptions, apply_preset, build, export_source, trtexec_command
from par_export.engine.presets import available_presets
from par_export.engine.run import run_image
from par_export.engine.verify import record_verification, verification_record, verify
from par_export.errors import UsageError
from par_export.export.metadata import read_metadata
from par_export.export.validate import format_rows
from par_export.models.names import MODEL_HELP


def cmd_build(args) -> int:
    batch = None
    if args.min_batch or args.opt_batch or args.max_batch:
        batch = (args.min_batch or 1, args.opt_batch or args.min_batch or 1, args.max_batch or 8)
        if not batch[0] <= batch[1] <= batch[2]:
            raise UsageError(f"--min-batch {batch[0]}, --opt-batch {batch[1]}, --max-batch {batch[2]}: expected "
                             "min <= opt <= max")
    if args.budget is not None and args.budget_range:
        raise UsageError("--budget and --budget-range: give one (the range exports a budget input with K = its middle "
                         "value)")
    options = BuildOptions(precision=args.precision, backend=args.backend, target=args.target, batch=batch,
                           budget=args.budget_range, export_budget=args.budget, workspace_mib=args.workspace, timing_cache=args.timing_cache,
                           version_compatible=args.version_compatible, dla_core=args.dla_core, plugin=args.plugin,
                           calib_images=args.calib_images, clip=args.clip, atol=args.atol, rtol=args.rtol,
                           par=tuple(args.par))
    if args.calib_images == "demo":  # the procedural VQA scenes the demo model is trained on
        options.calib_images = demo_scenes()
    source = args.source or args.model
    if source is None:
        raise UsageError("give the exported folder / vision_par.onnx, or --model PATH|tiny")
    if args.print_trtexec:
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


def cmd_verify(args) -> int:
    rows, passed, precision = verify(args.artifact, count=args.n, atol=args.atol, rtol=args.rtol)
    record_verification(args.artifact, verification_record(rows, passed, precision))
    print(format_rows(rows))
    print(f"verify ({precision}): {'PASSED' if passed else 'FAILED'} (recorded in {Path(args.artifact) / 'manifest.json'})")
    return 0 if passed else 1


def cmd_run(args) -> int:
    check_prompt(args.prompt, "--prompt")  # the server's rule: a question, not empty, not a document
    heatmap = args.heatmap or "kept_tokens.png"  # never inside the sealed artifact
    result = run_image(args.artifact, args.image, args.prompt, args.budget, heatmap, args.allow_unverified, args.par,
                       args.repeat)
    print(f"query: {result['query']!r}")
    print(f"kept {result['num_kept']}/{result['tokens_per_image']} tokens "
          f"({result['backend']} {result['precision']}); first kept indices {result['keep_index'][:12]}")
    rows = result["image_embeds"]  # [K, D], or [1 + L, K, D] with Qwen3-VL's DeepStack rows
    shape = ", ".join(str(n) for n in rows.shape)
    print(f"image_embeds [{shape}]{' (main rows, then each DeepStack level)' if rows.ndim == 3 else ''}, first values "
          f"{[round(float(v), 4) for v in rows.reshape(-1, rows.shape[-1])[0, :6]]}")
    rounds = f"median of {args.repeat} calls after a warm-up" if args.repeat else "one cold call"
    print(f"timings ({result['backend']} {result['precision']}, {rounds}, {os.cpu_count()} CPU cores, load "
          f"{os.getloadavg()[0]:.2f}):")
    for name, ms in result["timings_ms"].items():
        print(f"  {name}: {ms:.2f} ms")
    print(f"wrote {heatmap}" if result["heatmap"] else "no heatmap for this model family yet")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--budget", type=budget, help="building from a model: 'auto' (PAR's adaptive K, default) or K, "
                   "exported as a budget input that run/serve may change per call (1..K's width)")
    p.add_argument("--budget-range", type=triple, help="MIN:MAX or MIN:OPT:MAX kept tokens: a budget input, "
                   "exported with K = OPT (what a --target preset sets)")
    p.add_argument("--workspace", type=POSITIVE, help="TensorRT workspace memory pool in MiB")
    p.add_argument("--pool-limit", type=pool_limit, dest="workspace", metavar="workspace:SIZE",
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
    p.add_argument("-n", type=at_least(1, 1000), default=3, help="number of inputs (batch sizes cycle 1, 2, 4)")
    add_tolerances(p)
    add_device(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("run", help="one image + prompt through a built artifact; kept tokens as a PNG")
    p.add_argument("artifact", help=ARTIFACT)
    p.add_argument("--image", required=True, help="image file (PNG, JPEG, ...)")
    p.add_argument("--prompt", required=True, help="the question the image is reduced for")
    p.add_argument("--budget", type=budget, help="K, or 'auto' for an artifact exported with --budget auto "
                   "(default: the artifact's)")
    add_device(p)
    p.add_argument("--heatmap", help="PNG path (default ./kept_tokens.png; never inside the sealed artifact)")
    p.add_argument("--repeat", type=NON_NEGATIVE, default=3, help="timed calls of each graph after a warm-up "
                   "(median and min shown; 0: one cold call; default 3)")
    add_par(p, PAR_QUERY)
    p.add_argument("--allow-unverified", action="store_true", help=UNVERIFIED)
    p.set_defaults(func=cmd_run)
