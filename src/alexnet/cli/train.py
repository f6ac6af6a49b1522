"""`alexnet train --data STORE --out RUN_DIR [--preset P] [--config FILE.yaml] [--init SOURCE [--freeze LAYER]] [key=value ...]`"""

from __future__ import annotations

import argparse
import json
import os

from ..config import PRESETS, load_config
from ..errors import ConfigError
from ..parallel.model_parallel import parse_devices
from ..report import write_report
from ..train import train
from ._args import add_model_parallel_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a prepared dataset (the paper's recipe by default)",
        description="Train on a prepared dataset. Settings: --preset, then --config FILE.yaml, then key=value "
        "overrides (e.g. optim.lr=0.02 epochs=30 model.options.dropout=0.3). Multi-process: "
        "torchrun --nproc_per_node=N -m alexnet train ...",
    )
    p.add_argument("--data", help="prepared dataset folder (from `alexnet prepare`)")
    p.add_argument("--arch", help="model name (overrides model.arch)")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--preset", default="paper", help=f"named settings: {', '.join(PRESETS)} (default paper)")
    p.add_argument("--config", help="YAML file of settings")
    p.add_argument("--init", metavar="SOURCE",
                   help="start from a trained net (checkpoint, run folder or imported weights): its network, crop and "
                   "normalisation, every weight whose shape fits (the rest, e.g. fc8 for other classes, from the init)")
    p.add_argument("--init-norm", choices=("source", "data"), default="source",
                   help="with --init: normalise as the source net was trained (default), or by this store's statistics")
    p.add_argument("--freeze", metavar="LAYER",
                   help="fix every layer up to and including LAYER (conv1..conv5, fc6, fc7); the same as freeze=LAYER")
    add_model_parallel_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True, help="write report.md at the end")
    p.add_argument("--json", action="store_true", help="print the final result as JSON")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="setting overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.resume:
        if args.overrides or args.config or args.arch or args.freeze:
            raise ConfigError("--resume continues a run with its saved settings; drop the overrides")
        if args.init:
            raise ConfigError("--init starts a run from a trained net; --resume continues one from its own weights")
        out, data, cfg = args.resume, args.data or "", None
    else:
        if not args.data or not args.out:
            raise ConfigError("train needs --data STORE and --out RUN_DIR (or --resume RUN_DIR)")
        overrides = list(args.overrides)
        if args.arch:
            if args.init:
                raise ConfigError("--arch and --init: a run from --init trains the source's network")
            overrides.append(f"model.arch={args.arch}")
        if args.freeze:
            overrides.append(f"freeze={args.freeze}")
        if args.preset == "finetune" and not args.init:
            raise ConfigError("the finetune preset fine-tunes a trained net: give it with --init SOURCE")
        cfg = load_config(args.preset, args.config, overrides)
        out, data = args.out, args.data
    devices = None
    if args.model_parallel:

        devices = parse_devices(args.model_parallel)
    result = train(cfg, data, out, resume=bool(args.resume), progress=not args.no_progress,  # type: ignore[arg-type]
                   model_parallel=devices, init=args.init, init_norm=args.init_norm)  # fmt: skip
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    if args.report:

        result["report"] = str(write_report(out))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        v = result.get("last_validation") or {}
        err = f", validation top-1 error {v['top1_error']:.4f}, top-5 {v['top5_error']:.4f}" if v else ""
        print(f"trained {result['step']} steps ({result['epoch']} epochs){err}; run folder {out}")
    return 0
