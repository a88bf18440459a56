#!/usr/bin/env python3
"""par-export benchmarks: every figure a ratio of two things measured side by side in one run.

Sub-benchmarks (pick any; each prints a table and writes ``OUT/<name>.json``; reducer and prefill also a PNG):

- ``reducer``: each token reducer, and PAR's query encoder (CLIP-L text tower, 16 tokens),
  against the CLIP-L/336 tower they follow (random weights), for
  batch sizes and token counts N (N = c x 576 is c tower crops, as LLaVA-NeXT's anyres), with the
  exponent of a power-law fit of reducer time against N.
- ``space``: PAR with ``space=llm`` at LLaVA-1.5-7B's geometry (the 1024 -> 4096 -> 4096 MLP
  projector, random weights): project every token once and reduce the projector's output,
  clustering on the tower's 1024-wide tokens (what the adapter does) or on the 4096-wide rows,
  against projecting every token (what the unreduced model does anyway); for reference, the
  earlier form (project all N to score them, reduce the tower's tokens, project the K kept again)
  and ``space=clip`` (reduce, then project the K kept).
- ``prefill``: an LLM at LLaVA-1.5-7B's geometry (Vicuna-7B: width 4096, 32 heads, MLP 11008,
  random weights) prefilling K visual + T text tokens against 576 + T, with ``logits_to_keep=1``
  (only the last position's logits, as generation needs), measured directly at ``--prefill-layers``
  layers (default 8, where the fixed part, the LM head, is small), with the spread over rounds.
- ``graph``: built artifacts' vision+PAR graph (e.g. ONNX Runtime fp32 and fp16 builds of a
  CLIP-L/336 export) against the PyTorch module they were exported from, same feeds.
- ``kv``: KV-cache bytes (fp16) at that geometry for each K against 576 (computed, not timed).
- ``ttft``: end-to-end time to first token on the shipped demo model, reduced against full
  context through the same LLM runtime (``par-export chat``'s measurement).

Timing protocol: one warm-up, then ``--rounds`` rounds in which the two sides of every ratio run
back to back (interleaved), so load hits both alike; median and min over the rounds; the load
average before and after is recorded; absolute times are labelled with the device.

    python tools/bench.py reducer prefill kv ttft --out out/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

SUBS = ("reducer", "space", "graph", "prefill", "kv", "ttft")


def device_label() -> str:
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def load() -> float:
    return os.getloadavg()[0]


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(sides: dict, rounds: int, progress: str = "") -> dict[str, list[float]]:
    """Seconds per call of each ``{name: fn}``: one warm-up call each, then ``rounds`` rounds
    calling every side once, in order (interleaved)."""
    for fn in sides.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name, fn in sides.items():
            times[name].append(seconds(fn))
        if progress:
            print(f"  {progress}: round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return times


def ratio_stats(numerator: list[float], denominator: list[float]) -> dict:
    """Median and min of the per-round ratios, with each side's median time (ms)."""
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {"ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "a_ms": statistics.median(numerator) * 1e3, "b_ms": statistics.median(denominator) * 1e3}


# ----------------------------------------------------------------------------- reducer vs tower
def bench_reducer(args) -> dict:
    from torch import nn
    from transformers import CLIPTextModelWithProjection, CLIPVisionModel

    from par_export.models.geometries import clip_l14_336_vision, clip_l14_text
    from par_export.reduce import PARConfig, available_methods, create_reducer

    torch.manual_seed(0)
    config = clip_l14_336_vision()
    tower = CLIPVisionModel._from_config(config, attn_implementation="sdpa").eval()
    # PAR's query encoder in CLIP space: CLIP-L's text tower on a 16-token rewritten prompt
    text_tower = CLIPTextModelWithProjection._from_config(clip_l14_text(), attn_implementation="sdpa").eval()
    projection = nn.Sequential(nn.LayerNorm(config.hidden_size),
                               nn.Linear(config.hidden_size, config.projection_dim, bias=False)).eval()
    methods = list(available_methods()) if args.methods == "all" else args.methods.split(",")
    per_crop = (config.image_size // config.patch_size) ** 2
    rows = []
    for batch in args.batch:
        for crops in args.crops:
            n = crops * per_crop
            if batch * crops > args.max_images:
                print(f"  skipped batch {batch} x N {n}: {batch * crops} tower crops > --max-images "
                      f"{args.max_images}", file=sys.stderr)
                continue
            pixels = torch.randn(batch * crops, 3, config.image_size, config.image_size)
            tokens = torch.randn(batch, n, config.hidden_size)
            prompt = torch.randn(batch, 1, config.projection_dim)
            attn = torch.softmax(torch.randn(batch, n), dim=-1)
            query_ids = torch.randint(0, 49408, (batch, 16))
            sides = {"tower": lambda: tower(pixels, output_hidden_states=True),
                     "query_encoder": lambda: text_tower(input_ids=query_ids)}
            for name in methods:
                reducer = create_reducer(name, config=PARConfig(), query_projection=projection)
                if name in ("pool", "prumerge_mean") and crops > 1:
                    continue  # one image's grid: not defined over several crops
                k = "auto" if reducer.supports_auto else args.budget
                sides[name] = (lambda r=reducer, k=k: r(tokens, prompt, attn, budget=k))
            with torch.no_grad():
                times = side_by_side(sides, args.rounds, f"reducer batch {batch} N {n}")
            for name in sides:
                if name != "tower":
                    rows.append({"method": name, "batch": batch, "n": n,
                                 **ratio_stats(times[name], times["tower"])})
    fits = {}
    for name in {r["method"] for r in rows}:
        for batch in args.batch:
            points = [(r["n"], r["a_ms"]) for r in rows if r["method"] == name and r["batch"] == batch]
            if len(points) >= 2:
                slope = np.polyfit(np.log([p[0] for p in points]), np.log([p[1] for p in points]), 1)[0]
                fits[f"{name} batch {batch}"] = float(slope)
    print(f"{'method':<10} {'batch':>5} {'N':>5} {'reducer ms':>10} {'tower ms':>9} {'reducer/tower':>13} {'(min)':>7}")
    for r in sorted(rows, key=lambda r: (r["batch"], r["n"], r["method"])):
        print(f"{r['method']:<10} {r['batch']:>5} {r['n']:>5} {r['a_ms']:>10.2f} {r['b_ms']:>9.0f} "
              f"{r['ratio_median']:>13.2%} {r['ratio_min']:>7.2%}")
    print("reducer time ~ N^p, fitted p: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(fits.items())))
    plot_reducer(rows, args)
    return {"rows": rows, "exponents": fits, "budget": args.budget}


def plot_reducer(rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.batch), figsize=(6 * len(args.batch), 4), squeeze=False)
    for ax, batch in zip(axes[0], args.batch):
        for name in sorted({r["method"] for r in rows}):
            points = sorted((r["n"], r["ratio_median"] * 100) for r in rows if r["method"] == name and r["batch"] == batch)
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ax.set(xlabel="visual tokens N", ylabel="reducer time / tower time (%)", yscale="log",
               title=f"batch {batch}, median of {args.rounds} rounds (n={args.rounds} per point)")
        ax.legend(fontsize=7)
    fig.suptitle(f"token reducers vs CLIP-L/336 tower, {device_label()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out / "reducer.png", dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- space=llm vs projecting
def bench_space(args) -> dict:
    from torch import nn
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    from par_export.models.geometries import llava_config
    from par_export.reduce import PARConfig, create_reducer

    torch.manual_seed(0)
    config = llava_config("llava-1.5-7b")
    projector = LlavaMultiModalProjector(config).eval()
    width, d_llm = config.vision_config.hidden_size, config.text_config.hidden_size
    clip_projection = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 768, bias=False)).eval()
    llm_par = create_reducer("par", config=PARConfig(space="llm"))
    scored_par = create_reducer("par", config=PARConfig(space="llm"), query_projection=projector)
    clip_par = create_reducer("par", config=PARConfig(), query_projection=clip_projection)
    per_crop = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    rows = []
    for batch in args.batch:
        for crops in args.crops:
            n = crops * per_crop
            tokens = torch.randn(batch, n, width)
            attn = torch.softmax(torch.randn(batch, n), dim=-1)
            query_llm = torch.randn(batch, 16, d_llm)  # 16 prompt tokens' input embeddings
            query_clip = torch.randn(batch, 1, 768)

            def project_once_then_reduce():
                return llm_par(projector(tokens), query_llm, attn, budget="auto").tokens

            def cluster_on_tower_tokens():  # what space=llm does now: similarities from the 1024-wide tokens
                return llm_par(projector(tokens), query_llm, attn, budget="auto", cluster_tokens=tokens).tokens

            def project_to_score_then_again():
                return projector(scored_par(tokens, query_llm, attn, budget="auto").tokens)

            def clip_then_project():
                return projector(clip_par(tokens, query_clip, attn, budget="auto").tokens)

            sides = {"project all N": lambda: projector(tokens),
                     "space=llm, tower clusters": cluster_on_tower_tokens,
                     "space=llm, rows cluster": project_once_then_reduce,
                     "space=llm, projected twice": project_to_score_then_again,
                     "space=clip + project K": clip_then_project}
            with torch.no_grad():
                times = side_by_side(sides, args.rounds, f"space batch {batch} N {n}")
            rows += [{"path": name, "batch": batch, "n": n, **ratio_stats(times[name], times["project all N"])}
                     for name in sides if name != "project all N"]
    print(f"{'path':<28} {'batch':>5} {'N':>5} {'path ms':>8} {'project ms':>10} {'ratio':>6} {'(min)':>6}")
    for r in rows:
        print(f"{r['path']:<28} {r['batch']:>5} {r['n']:>5} {r['a_ms']:>8.1f} {r['b_ms']:>10.1f} "
              f"{r['ratio_median']:>6.2f} {r['ratio_min']:>6.2f}")
    return {"rows": rows, "geometry": "llava-1.5-7b projector (1024 -> 4096 -> 4096), budget auto"}


# ----------------------------------------------------------------------------- LLM prefill
def bench_prefill(args) -> dict:
    """Prefill of K visual + T text tokens against 576 + T, measured directly at ``--prefill-layers``
    layers of the Vicuna-7B geometry (8 fit in this machine's memory: the fixed part, LM head over
    the 32000-word vocabulary on one position, is then small), reduced and full calls interleaved
    round by round. No extrapolation: the ratio is of two measured calls, with its spread."""
    from transformers import LlamaForCausalLM

    from par_export.models.geometries import LLAVA_GEOMETRIES

    config = LLAVA_GEOMETRIES["llava-1.5-7b"]()
    depth = args.prefill_layers
    config.num_hidden_layers = depth
    text, full_visual = args.text_tokens, 576
    contexts = {k: k + text for k in args.kept} | {"full": full_visual + text}
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    embeds = {name: torch.randn(1, length, config.hidden_size) * 0.02 for name, length in contexts.items()}
    sides = {name: (lambda e=e, m=model: m(inputs_embeds=e, logits_to_keep=1, use_cache=True))
             for name, e in embeds.items()}
    with torch.no_grad():
        times = side_by_side(sides, args.rounds, "prefill")
    del model, sides
    rows = []
    for name in args.kept:
        ratios = sorted(a / b for a, b in zip(times[name], times["full"]))
        stats = ratio_stats(times[name], times["full"])
        rows.append({"kept": name, "context": contexts[name], "full_context": contexts["full"], "layers": depth,
                     "ratio_median": stats["ratio_median"], "ratio_min": stats["ratio_min"], "ratio_max": ratios[-1],
                     "reduced_ms": stats["a_ms"], "full_ms": stats["b_ms"],
                     "flops_ratio": flops_ratio(config, contexts[name], contexts["full"], depth)})
    print(f"{'K':>4} {'tokens':>6} {'full':>5} {f'ratio, {depth} layers':>17} {'(min-max)':>13} {'reduced ms':>10} "
          f"{'full ms':>8} {'FLOPs ratio':>11}")
    for r in rows:
        spread = f"{r['ratio_min']:.3f}-{r['ratio_max']:.3f}"
        print(f"{r['kept']:>4} {r['context']:>6} {r['full_context']:>5} {r['ratio_median']:>17.3f} {spread:>13} "
              f"{r['reduced_ms']:>10.0f} {r['full_ms']:>8.0f} {r['flops_ratio']:>11.3f}")
    plot_prefill(rows, args)
    return {"rows": rows, "text_tokens": text, "layers": depth,
            "geometry": f"llava-1.5-7b (Vicuna-7B) at {depth} layers, fp32, random weights"}


def flops_ratio(config, tokens: int, full_tokens: int, layers: int) -> float:
    from par_export.flops import llm_prefill_flops

    config.num_hidden_layers = layers
    return llm_prefill_flops(config, tokens) / llm_prefill_flops(config, full_tokens)


def plot_prefill(rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    kept = [r["kept"] for r in rows]
    median = [r["ratio_median"] for r in rows]
    ax.errorbar(kept, median, yerr=[[m - r["ratio_min"] for m, r in zip(median, rows)],
                                    [r["ratio_max"] - m for m, r in zip(median, rows)]],
                marker="o", capsize=3, label=f"measured, {args.prefill_layers} layers (median, min-max)")
    ax.plot(kept, [r["flops_ratio"] for r in rows], marker="s", label=f"FLOPs ({args.prefill_layers} layers)")
    ax.axhline(0.2, color="grey", linestyle=":", label="goal 0.2 at K=64")
    ax.set(xlabel="kept visual tokens K (of 576)", ylabel="prefill time, reduced / full",
           title=f"Vicuna-7B geometry prefill, {args.rounds} rounds (n={args.rounds})")
    ax.legend(fontsize=8)
    fig.suptitle(device_label(), fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "prefill.png", dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- vision+PAR graph
def bench_graph(args) -> dict:
    """Each ``--artifacts`` folder's vision+PAR graph (ONNX Runtime, or TensorRT where built so)
    against the PyTorch module it was exported from, on one verification feed per batch size."""
    import tempfile

    from par_export.artifact import Artifact, cast_feed
    from par_export.engine.verify import torch_reference, verification_feeds

    if not args.artifacts:
        raise SystemExit("graph: pass --artifacts FOLDER [FOLDER ...] (par-export build outputs of one export)")
    loaded = {}
    for folder in args.artifacts:
        artifact = Artifact.open(folder, allow_unverified=True)
        manifest, runner = artifact.manifest, artifact.runners["vision_par"]
        runner.activate()
        loaded[f"{manifest.backend} {manifest.precision}"] = (manifest, runner)
    metadata = next(iter(loaded.values()))[0].metadata
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        module, reason = torch_reference(metadata, Path(tmp))
        if module is None:
            raise SystemExit(f"graph: no PyTorch reference: {reason}")
        feeds = verification_feeds(metadata, 3)
        for case, feed in feeds:
            args_torch = [torch.from_numpy(np.asarray(feed[name])) for name in ("pixel_values", "query_embeds", "budget")
                          if name in feed]
            sides = {"torch": lambda a=args_torch: module(*a)}
            for label, (manifest, runner) in loaded.items():
                typed = cast_feed(feed, manifest.graphs["vision_par"])
                sides[label] = lambda r=runner, f=typed: r.infer(f)
            times = side_by_side(sides, args.rounds, f"graph {case}")
            for label in loaded:
                rows.append({"graph": label, "case": case, **ratio_stats(times[label], times["torch"])})
    for _, runner in loaded.values():
        runner.deactivate()
    print(f"{'graph':<22} {'case':<20} {'graph ms':>9} {'torch ms':>9} {'graph/torch':>11} {'(min)':>6}")
    for r in rows:
        print(f"{r['graph']:<22} {r['case']:<20} {r['a_ms']:>9.1f} {r['b_ms']:>9.1f} {r['ratio_median']:>11.3f} "
              f"{r['ratio_min']:>6.3f}")
    return {"rows": rows, "model": metadata.model, "method": metadata.method, "budget": metadata.budget}


# ----------------------------------------------------------------------------- KV cache
def bench_kv(args) -> dict:
    from par_export.memory import kv_cache_bytes
    from par_export.models.geometries import LLAVA_GEOMETRIES

    config = LLAVA_GEOMETRIES["llava-1.5-7b"]()
    full = kv_cache_bytes(config, 576 + args.text_tokens, "fp16")
    rows = [{"kept": k, "mib": kv_cache_bytes(config, k + args.text_tokens, "fp16") / 2**20,
             "full_mib": full / 2**20, "ratio": kv_cache_bytes(config, k + args.text_tokens, "fp16") / full}
            for k in args.kept]
    print(f"{'K':>4} {'KV MiB (fp16)':>13} {'full MiB':>8} {'ratio':>6}")
    for r in rows:
        print(f"{r['kept']:>4} {r['mib']:>13.1f} {r['full_mib']:>8.1f} {r['ratio']:>6.3f}")
    return {"rows": rows, "text_tokens": args.text_tokens}


# ----------------------------------------------------------------------------- end-to-end TTFT
def bench_ttft(args) -> dict:
    from par_export.data.vqa import render, sample
    from par_export.engine.build import BuildOptions, build
    from par_export.export import export_model
    from par_export.models.names import resolve_model
    from par_export.reduce import PARConfig
    from par_export.runtime.chat import ChatOptions, chat

    image = args.out / "scene.png"
    render(sample(2_000_003)).save(image)
    work = args.out / "ttft"
    llava, clip = resolve_model("demo", work)
    # a budget input as wide as the image's 256 tokens: the full row runs through the same graph (K = N)
    export_model(llava, work / "onnx", budget=args.ttft_budget, config=PARConfig(k_max=256), clip_path=clip,
                 overwrite=True, progress=False)
    build(work / "onnx", work / "art", BuildOptions(precision="fp32", backend="onnxruntime"), overwrite=True,
          progress=False)
    results = {}
    for llm in args.llm:
        result = chat("demo", image, "what shape is the red object ?",
                      ChatOptions(budget=args.ttft_budget, artifact=work / "art", compare_full=True, max_new_tokens=8,
                                  llm=llm, repeat=args.rounds))
        results[llm] = result
        reduced, full = result["rows"]
        print(f"{llm}: TTFT reduced {reduced['ttft_ms']:.1f} ms (K={reduced['context']}) vs full "
              f"{full['ttft_ms']:.1f} ms: ratio {reduced['ttft_ms'] / full['ttft_ms']:.3f}; prefill ratio "
              f"{reduced['prefill_ms'] / full['prefill_ms']:.3f}; full row's vision: {full['vision_backend']}")
    return {"runs": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmarks", nargs="+", choices=SUBS, help="which sub-benchmarks to run")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for JSON and PNG results")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after a warm-up (default 3)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="reducer, space: batch sizes")
    parser.add_argument("--crops", type=int, nargs="+", default=[1, 2, 5],
                        help="reducer, space: N = crops x 576 tokens (default 1 2 5: N 576 to 2880)")
    parser.add_argument("--max-images", type=int, default=16, help="reducer: skip batch x crops above this many "
                        "tower images (a CPU takes minutes per call there)")
    parser.add_argument("--methods", default="all", help="reducer: comma-separated methods, or 'all'")
    parser.add_argument("--budget", type=int, default=64, help="reducer: K for methods without an adaptive budget")
    parser.add_argument("--kept", type=int, nargs="+", default=[16, 32, 64, 128, 192], help="prefill/kv: K values")
    parser.add_argument("--text-tokens", type=int, default=40, help="prefill/kv: text tokens beside the image")
    parser.add_argument("--prefill-layers", type=int, default=8, help="prefill: decoder layers of the 7B geometry "
                        "measured (default 8: about 7.5 GB in fp32)")
    parser.add_argument("--llm", nargs="+", default=["transformers", "onnxruntime"],
                        choices=["transformers", "onnxruntime", "onnxruntime-genai"], help="ttft: LLM runtimes")
    parser.add_argument("--artifacts", nargs="+", type=Path, help="graph: `par-export build` folders of one export "
                        "(e.g. its fp32 and fp16 builds)")
    parser.add_argument("--ttft-budget", type=int, default=26, help="ttft: K (default 26: the demo's mean "
                        "adaptive K)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runners = {"reducer": bench_reducer, "space": bench_space, "graph": bench_graph, "prefill": bench_prefill, "kv": bench_kv,
               "ttft": bench_ttft}
    for name in args.benchmarks:
        before = load()
        print(f"== {name} ({device_label()}; torch {torch.__version__}; load average {before:.2f})", flush=True)
        result = runners[name](args)
        result.update({"device": device_label(), "load_before": before, "load_after": load(), "rounds": args.rounds,
                       "when": time.strftime("%Y-%m-%d %H:%M:%S")})
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
        print(f"   load average after: {result['load_after']:.2f}; wrote {args.out / (name + '.json')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
