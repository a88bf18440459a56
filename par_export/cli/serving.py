"""``par-export serve`` and ``triton-repo``: an artifact behind Triton."""

from __future__ import annotations

import argparse

from par_export.cli.args import ARTIFACT, NON_NEGATIVE, OVERWRITE, PORT, POSITIVE, UNVERIFIED
from par_export.serving.server import ServeOptions, serve
from par_export.serving.triton import write_triton_repo


def cmd_triton_repo(args) -> int:
    for path in write_triton_repo(args.source, args.out, args.overwrite):
        print(f"wrote {path}")
    return 0


def cmd_serve(args) -> int:
    options = ServeOptions(http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                           max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
                           instances=args.instances, allow_unverified=args.allow_unverified,
                           tritonserver=args.tritonserver)
    return serve(args.artifact, options)


def register(sub: argparse._SubParsersAction) -> None:
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
