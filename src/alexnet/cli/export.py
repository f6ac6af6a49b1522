"""`alexnet export --checkpoint CKPT --format onnx|safetensors|torchscript|caffe-npy --out FILE [--json]`

(`alexnet export CKPT ...`, the older spelling, still works.)
"""

from __future__ import annotations

import argparse
import json

from ..interop.export import FORMATS, export_checkpoint
from ._args import add_checkpoint_arg, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a checkpoint as ONNX, safetensors, TorchScript or bvlc_alexnet.npy; checked")
    add_checkpoint_arg(p, positional=True)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--opset", type=positive_int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--no-check", action="store_true", help="skip reloading the file and comparing with PyTorch")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = export_checkpoint(args.checkpoint, args.format, args.out, opset=args.opset, check=not args.no_check)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    line = f"wrote {result.out} ({result.format}, {result.bytes / 2**20:.1f} MiB)"
    c = result.check
    if "runtime" in c:
        line += (f"; {c['runtime']} on batch {c['batch']}: max abs difference to PyTorch {c['max_abs_diff']:.2e} "
                 f"(outputs up to {c['max_abs_output']:.3g})")  # fmt: skip
    elif "reloaded_with" in c:
        line += "; reloaded with create_model: weights identical"
    print(line)
    return 0
