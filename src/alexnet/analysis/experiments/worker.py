"""One run of an experiment in its own process: what `Context.prefetch` starts for `--jobs N`.

`python -m alexnet.analysis.experiments.worker SPEC` where SPEC is the JSON that `prefetch`
writes (Context.spec): the experiment's invocation (name, data, out, seeds, epochs, max_steps,
overrides, train_eval, init), the run (arm, seed, extra settings, measure, label) and the threads to use. It
opens the same Context and calls the same `run`, so the run lands where the runner will look.
"""

from __future__ import annotations

import json
import sys

import torch

from ...errors import AlexNetError
from . import get
from .common import Context


def main(argv: list[str]) -> int:
    """Train and measure the one run; a user's mistake is one line on stderr and exit status 2, as in the CLI."""
    spec = json.loads(argv[0])
    torch.set_num_threads(spec["threads"])
    try:
        _run(spec)
    except AlexNetError as exc:
        print(f"alexnet experiment {spec['name']} ({spec['label']}, seed {spec['seed']}): {exc}", file=sys.stderr)
        return 2
    return 0


def _run(spec: dict) -> None:
    ctx = Context.open(get(spec["name"]), spec["data"], spec["out"], seeds=spec["seeds"], epochs=spec["epochs"],
                       max_steps=spec["max_steps"], overrides=spec["overrides"], train_eval=spec["train_eval"],
                       progress=False, log=(lambda m: print(m, file=sys.stderr, flush=True)) if spec["log"] else None,
                       init=spec.get("init"))  # fmt: skip
    ctx.run(ctx.config(spec["arm"], spec["seed"], *spec["extra"]), spec["label"], measure=spec["measure"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
