"""``par-export chat``, ``emit`` and ``eval``: the reduced context in front of an LLM."""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from par_export.cli.args import (
    ARTIFACT,
    OVERWRITE,
    PAR_GRAPH,
    PAR_QUERY,
    POSITIVE,
    UNVERIFIED,
    add_device,
    add_par,
    budget,
    budgets,
)
from par_export.engine.run import run_image
from par_export.errors import UsageError
from par_export.eval.run import DEFAULT_BUDGETS, DEFAULT_METHODS, EvalOptions, run_eval
from par_export.eval.vqa import format_rows, result_rows, write_outputs
from par_export.files import check_out, check_replaceable
from par_export.models.families import family_for
from par_export.models.names import MODEL_HELP, resolve_model
from par_export.processing import open_image
from par_export.reduce import PARConfig, authors_methods, available_methods
from par_export.runtime.chat import ChatOptions, chat, format_chat
from par_export.runtime.emit import emit, emit_mrope, write_emitted
from par_export.runtime.pipeline import VisionLanguagePipeline


def cmd_eval(args) -> int:
    inputs = [p for p in (args.model, args.clip) if p]
    data = [p for p in (args.data, args.images) if p]
    sealed = [args.backend] if args.backend not in ("torch", "onnxruntime") else []  # an artifact
    # the output folder is checked before the evaluation, not after it
    check_replaceable(check_out(args.out, inputs, sealed, data), args.overwrite, UsageError)
    try:  # checked here rather than by argparse, so that eval's one-line errors all come from main
        values = budgets(args.budgets)
    except argparse.ArgumentTypeError as err:
        raise UsageError(f"--budgets: {err}") from None
    results = run_eval(EvalOptions(model=args.model, clip=args.clip, methods=tuple(args.methods.split(",")) if args.methods else (),
                                   budgets=tuple(values), backend=args.backend, split=args.split, n=args.n,
                                   batch=args.batch, data=args.data, images=args.images, par=tuple(args.par),
                                   allow_unverified=args.allow_unverified))
    if args.data:
        print(f"{results['records']} records; skipped: {results['skipped'] or 'none'}")
    rows = result_rows(results)
    print(format_rows(rows))
    for path in write_outputs(rows, results, Path(args.out), args.overwrite, inputs, sealed, data):
        print(f"wrote {path}")
    return 0


def cmd_chat(args) -> int:
    options = ChatOptions(method=args.method, budget=args.budget, artifact=args.artifact,
                          compare_full=args.compare_full, max_new_tokens=args.max_new_tokens, llm=args.llm,
                          allow_unverified=args.allow_unverified, par=tuple(args.par), repeat=args.repeat)
    result = chat(args.model, args.image, args.prompt, options)
    if args.json:
        print(json.dumps({**result, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                          f"load {os.getloadavg()[0]:.2f}"}, indent=2))
        return 0
    print(format_chat(result))
    print(f"(measured on this machine's CPU, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f})")
    return 0


def cmd_emit(args) -> int:
    picture = open_image(args.image)
    with tempfile.TemporaryDirectory() as tmp:
        llava_dir, _ = resolve_model(args.model, Path(tmp))
        family = family_for(llava_dir)
        model, inputs = family.load_model(llava_dir), family.inputs(llava_dir)
    if family.places_rows and not family.onnx_llm:
        extra = " (its LLM also takes DeepStack rows)" if family.name == "qwen3_vl" else ""
        raise UsageError(f"emit: not for {family.name} yet{extra}: it writes LLaVA-1.5's and Qwen2.5-VL's LLM "
                         "inputs; chat and eval --backend answer with transformers")
    if family.onnx_llm and not family.pipeline:  # M-RoPE: one image through the artifact, positions placed
        result = run_image(args.artifact, args.image, args.prompt, args.budget, allow_unverified=args.allow_unverified)
        adapter = family.adapter(model, "par", PARConfig(space="llm"), inputs.tokenizer)  # places rows only
        arrays, meta = emit_mrope(adapter, inputs, result, picture, args.prompt, args.runtime)
    else:
        with VisionLanguagePipeline(args.artifact, model, inputs.tokenizer,
                                    allow_unverified=args.allow_unverified) as pipe:
            arrays, meta = emit(pipe, pipe.inputs.pixel_values([picture]), args.prompt, args.runtime, args.budget)
    print(f"{args.runtime}: K = {meta['num_kept']} visual rows of {meta['hidden_size']}, "
          f"{len(arrays['input_ids'])} prompt ids")
    for path in write_emitted(args.out, arrays, meta, args.overwrite, inputs=[args.artifact, args.image],
                              artifact=args.artifact):
        print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    methods = sorted(available_methods())

    p = sub.add_parser("eval", help="accuracy vs kept tokens per method on the demo VQA (CSV, JSON, PNG)")
    p.add_argument("--model", default="demo", help=MODEL_HELP + "; the procedural VQA needs a model trained on it "
                   "(demo, demo-qwen)")
    p.add_argument("--clip", help="local CLIP folder for space=clip (demo: shipped)")
    p.add_argument("--methods", default=None,
                   help="comma-separated reducers, of: " + ", ".join(methods) + " and the authors' forms " +
                   ", ".join(sorted(authors_methods())) + ", dart (DART inside the LLM; dart:layer=L) and downsample (the processor gives a smaller image, "
                   "N <= K; dynamic-resolution families); "
                   "NAME:OPT=VALUE[:...] overrides PAR options for one entry (ablations: par:router=keep,par:beta=1.0,"
                   "par:positions=sequential) "
                   f"(default: {','.join(DEFAULT_METHODS)}, less those the model's family cannot take: pool and "
                   "prumerge_mean need the same N for every image)")
    p.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)),
                   help="comma-separated K values and/or 'auto'")
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
    p.add_argument("--budget", type=budget, help="K, or 'auto' (adaptive); default: 'auto' when chat exports "
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
    p.add_argument("--budget", type=budget, help="K, or 'auto' for an artifact exported with --budget auto "
                   "(default: the artifact's)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    p.add_argument("--allow-unverified", action="store_true", help=UNVERIFIED)
    p.set_defaults(func=cmd_emit)
