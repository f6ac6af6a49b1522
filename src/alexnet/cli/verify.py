"""`alexnet verify STORE [--workers N] [--json]`: rehash a prepared store against its manifests.

Exit 0 when every file matches, 1 with one line per corrupt or missing file otherwise (2, as
for every command, when STORE is not a prepared store at all).
"""

from __future__ import annotations

import argparse
import json
import os

from ..data.store import verify_store
from ._args import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check a prepared store's files against the sha256 checksums in its manifests")
    p.add_argument("store", metavar="STORE", help="a prepared dataset (OUT) or one of its splits (OUT/<split>)")
    p.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1),
                   help="files hashed at once, in threads (default: the cores, at most 8)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = verify_store(args.store, workers=args.workers, progress=not args.no_progress)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for p in result["problems"]:
            print(f"{p['file']}: {p['problem']}")
        verdict = "intact" if result["ok"] else f"{len(result['problems'])} bad"
        print(f"{result['path']}: {result['files']} files, {result['bytes'] / 2**20:.1f} MiB in "
              f"{', '.join(result['splits'])}: {verdict} ({result['seconds']:.1f} s)")  # fmt: skip
    return 0 if result["ok"] else 1
