"""`alexnet experiment NAME --data STORE [--seeds 3] [--epochs E] [--max-steps N] [--jobs N] [--out results] [--set key=value ...]`"""

from __future__ import annotations

import argparse
import json
import sys

from ..analysis.experiments import EXPERIMENTS, format_table, run_experiment
from ..data import open_dataset
from ._args import non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    lines = "\n".join(f"  {e.name:<13} {e.claim}" for e in EXPERIMENTS.values())
    p = sub.add_parser(
        "experiment",
        help="the paper's claims (Fig. 1, LRN, pooling, dropout, PCA lighting, depth, Fig. 3, Fig. 4) and transfer as seeded experiments",
        description="Train every arm with seeds 0..N-1 through the real training entry point, evaluate, and write "
        "OUT/NAME/results.json, table.md and figures. Runs live in OUT/runs, shared by experiments that train the "
        "same settings; finished runs are reused, killed ones resumed.\n\n" + lines,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=[*EXPERIMENTS, "all"], metavar="NAME", help=f"{', '.join(EXPERIMENTS)} or all")
    p.add_argument("--data", required=True, help="prepared dataset folder with train and test splits")
    p.add_argument("--out", default="results", help="results folder (default results)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per arm (default 3)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs per run (default: the experiment's own)")
    p.add_argument("--max-steps", type=non_negative_int, default=0, help="stop each run after this many steps (0: no limit)")
    p.add_argument("--train-eval", type=positive_int, default=10_000, help="training images to measure train error on")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="train this many runs at once, each in its own process on 1/JOBS of torch's threads "
                   "(default 1: one run after another on all of them)")  # fmt: skip
    p.add_argument("--progress", action="store_true", help="a progress bar per run (with --jobs 1)")
    p.add_argument("--json", action="store_true", help="print results.json instead of the table")
    # an option, not trailing positionals: argparse cannot take positionals both before and after options
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="settings for every arm, as for `alexnet train` (e.g. --set device=cuda data.workers=4)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    out = []
    for name in names:
        if args.name == "all" and EXPERIMENTS[name].needs_rgb and open_dataset(args.data)["train"].channels != 3:
            print(f"alexnet experiment: skipping {name}: it needs RGB images", file=sys.stderr)
            continue
        result = run_experiment(
            name, args.data, args.out, seeds=args.seeds, epochs=args.epochs, max_steps=args.max_steps,
            overrides=args.overrides, train_eval=args.train_eval, progress=args.progress, jobs=args.jobs,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )  # fmt: skip
        out.append(result)
        if not args.json:
            print(format_table(result) + "\n")
    if args.json:
        print(json.dumps(out if len(out) != 1 else out[0], indent=2))
    return 0
