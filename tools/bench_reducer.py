#!/usr/bin/env python3
"""Time each token reducer against the CLIP-L/336 vision tower it follows (random weights).

Prints, per batch size, the tower's time, each reducer's time and their ratio,
measured side by side in one run on this machine's device. The reducer gets what
PAR gets inside LLaVA-1.5: 576 patch tokens of width 1024, a CLIP-space prompt
embedding (768) with the post-LayerNorm + visual projection as query projection,
and the CLS attention.

    python tools/bench_reducer.py --batch 1 8 --budget 64
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    from transformers import CLIPVisionModel

    from par_export.models.geometries import clip_l14_336_vision
    from par_export.reduce import PARConfig, available_methods, create_reducer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--budget", default="64", help="int K or 'auto' (methods without auto get 64)")
    parser.add_argument("--methods", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--repeats", type=int, default=3, help="tower repeats (reducers get 5x as many)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = clip_l14_336_vision()
    tower = CLIPVisionModel._from_config(config, attn_implementation="sdpa").eval().to(device)
    projection = nn.Sequential(nn.LayerNorm(config.hidden_size),
                               nn.Linear(config.hidden_size, config.projection_dim, bias=False)).to(device).eval()
    methods = list(available_methods()) if args.methods == "all" else args.methods.split(",")
    budget = args.budget if args.budget == "auto" else int(args.budget)
    n = (config.image_size // config.patch_size) ** 2

    print(f"device: {device_label(device)}; torch {torch.__version__}; budget {budget}; "
          f"tokens [B, {n}, {config.hidden_size}], fp32")
    print(f"{'batch':>5} {'method':<10} {'reducer ms':>11} {'tower ms':>9} {'reducer/tower':>14}")
    for batch in args.batch:
        pixels = torch.randn(batch, 3, config.image_size, config.image_size, device=device)
        with torch.no_grad():
            tower_s = timed(lambda: tower(pixels, output_hidden_states=True), args.repeats)
            tokens = torch.randn(batch, n, config.hidden_size, device=device)
            prompt = torch.randn(batch, 1, config.projection_dim, device=device)
            attn = torch.softmax(torch.randn(batch, n, device=device), dim=-1)
            for name in methods:
                reducer = create_reducer(name, config=PARConfig(), query_projection=projection)
                k = budget if (budget != "auto" or reducer.supports_auto) else 64
                reducer_s = timed(lambda: reducer(tokens, prompt, attn, budget=k), 5 * args.repeats)
                print(f"{batch:>5} {name:<10} {reducer_s * 1e3:>11.2f} {tower_s * 1e3:>9.1f} "
                      f"{reducer_s / tower_s:>14.2%}", flush=True)


if __name__ == "__main__":
    main()
