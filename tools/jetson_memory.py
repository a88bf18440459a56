#!/usr/bin/env python3
"""Memory table for LLaVA-1.5 on a Jetson: full (576) vs reduced visual tokens, computed from
the published configs (no weights), printed for docs/jetson.md.

    python tools/jetson_memory.py --model-config llava-1.5-7b --weights int4 --device-gib 8
"""

from __future__ import annotations

import argparse

from par_export.memory import BYTES, format_memory_table, prefill_memory
from par_export.models.geometries import LLAVA_GEOMETRIES, llava_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", default="llava-1.5-7b", choices=sorted(LLAVA_GEOMETRIES))
    parser.add_argument("--weights", default="int4", choices=sorted(BYTES))
    parser.add_argument("--activations", default="fp16", choices=["fp16", "fp32", "fp8"])
    parser.add_argument("--device-gib", type=float, default=8.0, help="unified memory (Orin Nano: 8)")
    parser.add_argument("--text", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--visual", type=int, nargs="+", default=[576, 192, 64])
    args = parser.parse_args()
    config = llava_config(args.model_config).text_config
    rows = [prefill_memory(config, v, t, args.weights, args.activations) for t in args.text for v in args.visual]
    print(f"{args.model_config}: LLM weights {args.weights}, KV cache and activations {args.activations}, "
          f"{args.device_gib:g} GiB device; attention scores assume eager attention (one layer at a time)")
    print(format_memory_table(rows, args.device_gib * 2**30))


if __name__ == "__main__":
    main()
