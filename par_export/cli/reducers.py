"""``par-export methods``, ``flops``, ``reduce``: the algorithm on its own (no model folder)."""

from __future__ import annotations

import argparse

import torch

from par_export.cli.args import NON_NEGATIVE, POSITIVE, budget
from par_export.errors import UsageError
from par_export.files import check_out
from par_export.flops import flops_table, format_flops_table, llava_flops
from par_export.models.geometries import LLAVA_GEOMETRIES, clip_l14_text, llava_config
from par_export.plots import kept_token_map, save_kept_maps
from par_export.reduce import PARConfig, authors_methods, available_methods, create_reducer, reducer_class
from par_export.synthetic import planted_scene


def cmd_methods(args) -> int:
    print(f"{'method':<14} {'auto K':<6} {'needs':<14} description")
    for name, description in {**available_methods(), **authors_methods()}.items():
        cls = reducer_class(name)
        needs = "prompt|attn" if cls.uses_prompt else ("CLS attn" if cls.needs_attn else "-")
        if cls.tower_inputs:
            needs, description = "tower", f"{description} [eval and the LLaVA-1.5 adapter; does not export]"
        print(f"{name:<14} {'yes' if cls.supports_auto else 'no':<6} {needs:<14} {description}")
    return 0


def cmd_flops(args) -> int:
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
    png = save_kept_maps(check_out(args.out) / "kept_tokens.png", maps, titles,
                         [scene.target[b].view(side, side).numpy() for b in range(args.batch)])
    print(f"wrote {png}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    methods = sorted(available_methods())

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
    p.add_argument("--budget", type=budget, default="auto", help="K, or 'auto' (adaptive)")
    p.add_argument("--k-max", type=POSITIVE, default=192, help="adaptive K upper bound (PARConfig.k_max)")
    p.add_argument("--batch", type=POSITIVE, default=2, help="synthetic images")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="seed of the synthetic scenes")
    p.add_argument("--out", default="out", help="folder for kept_tokens.png")
    p.add_argument("--show-grid", action="store_true", help="print each image's kept map (# kept, + merged, . dropped)")
    p.set_defaults(func=cmd_reduce)
