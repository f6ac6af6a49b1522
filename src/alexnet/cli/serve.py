"""`alexnet serve --checkpoint CKPT [--data STORE] [--host 127.0.0.1] [--port 8000] [--device auto]`

(`alexnet serve RUN ...`, the older spelling, still works.)
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..serve import Explorer, ServeOptions, serve
from ..serve.images import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS
from ..serve.server import check_port
from ._args import add_checkpoint_arg, add_device_arg, port, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="the explorer: a local model server (JSON API) and a page that shows the network from the inside",
        description="Serves one checkpoint: top-k classes, every layer's activations, conv1's kernels (Fig. 3), "
        "the nearest training images by fc7 distance (Fig. 4, from an index built on first use and cached "
        "beside the run), the architecture table and, for a run folder, its training curves. "
        "The API is described in docs/explorer.md.",
    )
    add_checkpoint_arg(p, positional=True)
    p.add_argument("--data", metavar="STORE", help="prepared dataset: test images to pick, training images for neighbours")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port, default=8000, help="port to listen on (default 8000; 0: any free one)")
    p.add_argument("--layer", default="fc7", help="the neighbour feature layer (default fc7, the paper's)")
    add_device_arg(p)
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads (default 1: on a busy 2-core machine two-thread ops wait for the other core; "
                   "the neighbour scan took twice as long with 2, docs/benchmarks.md)")  # fmt: skip
    p.add_argument("--max-upload-mb", type=positive_float, default=MAX_UPLOAD_BYTES / 2**20, help="upload size limit in MiB")
    p.add_argument("--max-upload-pixels", type=positive_int, default=MAX_UPLOAD_PIXELS, help="upload pixel limit (bombs)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="warning")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    check_port(args.host, args.port)  # before the model loads: a taken port is a one-line error at once
    opts = ServeOptions(data=args.data, layer=args.layer, device=args.device,
                        max_upload_bytes=int(args.max_upload_mb * 2**20), max_upload_pixels=args.max_upload_pixels)  # fmt: skip
    explorer = Explorer(args.checkpoint, opts)
    for part, why in explorer.missing.items():
        print(f"alexnet serve: note: {part}: {why}", file=sys.stderr)
    where = f"[{args.host}]" if ":" in args.host else args.host
    print(f"alexnet serve: {explorer.predictor.arch} from {args.checkpoint} at http://{where}:{args.port}/ "
          "(Ctrl-C stops)", file=sys.stderr, flush=True)  # fmt: skip
    try:
        serve(explorer, args.host, args.port, log_level=args.log_level)
    except KeyboardInterrupt:  # uvicorn has shut down cleanly and re-raised the Ctrl-C
        pass
    print("alexnet serve: stopped", file=sys.stderr)
    return 0
