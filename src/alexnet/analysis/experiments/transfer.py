"""How transferable are AlexNet's features (Yosinski et al., 2014) at CIFAR-10's scale.

The store's classes are split in two halves in class order: A (the first half; CIFAR-10's
airplane, automobile, bird, cat, deer) and B (the rest: dog, frog, horse, ship, truck), each
prepared once from the store as a dataset of its own (`alexnet prepare STORE OUT --classes`),
with the store's val and test splits cut the same way. The `source` arm trains on A's training
split. On B, with N labelled training images a class (options["per_class"]; 0 means all of
them), each seed draws its own N a class (`data.train_subset_seed`), the same images for every
arm of that seed:

    scratch                 the source's recipe from random weights, the same epochs
    finetune                every layer from A (`train --init`, the `finetune` preset)
    finetune-frozen-conv    conv1..conv5 from A and frozen (`--freeze conv5`)
    probe-LAYER             a logistic regression on A's LAYER features (analysis/probe.py)

Every run's batch is at most N (so an epoch of the smallest subsets still takes C steps; a
smaller batch gets its recipe's lr scaled by the same factor, the linear scaling rule), the
budget is the same epochs for every trained arm, and every score is top-1 accuracy on B's test
split with the run's own validation views (the probe: the same views of the features).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...data.prepare import PrepareOptions, prepare
from ...errors import DataError
from ...figures import _plt, _save
from ...files import write_text_atomic
from ..probe import probe, source_stamp
from .common import Context, Job, footer, header, prefetch, summary, write_outputs

TRAINED = ("scratch", "finetune", "finetune-frozen-conv")


def halves(class_names: list[str]) -> tuple[list[str], list[str]]:
    """(A, B): the first half of the classes in class order, and the rest."""
    if len(class_names) < 4:
        raise DataError(f"the transfer experiment splits the classes in two halves of 2 or more; the store has "
                        f"{len(class_names)} ({', '.join(class_names)})")  # fmt: skip
    half = len(class_names) // 2
    return list(class_names[:half]), list(class_names[half:])


def run_transfer(ctx: Context) -> dict[str, Any]:
    if not {"val", "test"} <= set(ctx.splits):
        raise DataError(f"the transfer experiment needs train, val and test splits (the probe chooses its L2 weight "
                        f"on val); {ctx.data} has {', '.join(ctx.splits)}: prepare it with --val-fraction 0.1")  # fmt: skip
    folder = ctx.out / ctx.exp.name
    a_names, b_names = halves(ctx.train_store.class_names)
    data = folder / "data" / hashlib.sha256(str(ctx.data.resolve()).encode()).hexdigest()[:12]
    for half, names in (("A", a_names), ("B", b_names)):
        prepare(str(ctx.data), data / half, PrepareOptions(classes=tuple(names), progress=False))
    a, b = ctx.on(data / "A"), ctx.on(data / "B")
    sizes = [int(n) for n in ctx.exp.options["per_class"]]
    c = len(b_names)
    smallest = int(np.bincount(b.train_store.labels, minlength=c).min())
    for n in sizes:
        if n > smallest:
            raise DataError(f"{n} training images a class asked; B's smallest class has {smallest}")
    batch = b.config("scratch", 0).batch_size
    lr = {arm: b.config(arm, 0).optim.lr for arm in TRAINED}

    def extra(arm: str, n: int, seed: int) -> tuple[str, ...]:
        """A subset of N a class, drawn by the seed; a batch of N at most, its lr scaled with it (the linear rule)."""
        if not n:
            return ()
        small = () if n >= batch else (f"batch_size={n}", f"optim.lr={lr[arm] * n / batch:.6g}")
        return (f"data.train_subset={n * c}", f"data.train_subset_seed={seed}", *small)

    seeds = range(ctx.seeds)
    # the source first (the finetune arms wait for it), then the largest runs: fewer idle workers at the end
    largest_first = sorted(sizes, key=lambda n: -(n or smallest))
    scratch: list[tuple[Context, Job]] = [(b, ("scratch", s, extra("scratch", n, s), True)) for n in largest_first
                                          for s in seeds]  # fmt: skip
    prefetch([(a, ("source", 0, (), True)), *scratch])
    source_cfg = a.config("source", 0)
    source = a.run(source_cfg, "source on A")
    checkpoint = Path(source["run"]) / "last.pt"
    bi = ctx.on(data / "B", init=checkpoint)
    tuned = [(bi, (arm, s, extra(arm, n, s), True)) for n in largest_first for arm in TRAINED[1:] for s in seeds]
    prefetch(tuned)

    arms: dict[str, dict[str, Any]] = {}
    for arm in TRAINED:
        on = b if arm == "scratch" else bi
        arms[arm] = {}
        for n in sizes:
            runs = [_score(on.run(on.config(arm, s, *extra(arm, n, s)), f"{arm}, {n or 'all'} a class")) for s in seeds]
            arms[arm][str(n)] = _cell(runs)
    views = "flip" if source_cfg.data.flip_eval else "center"
    for layer in ctx.exp.options["probe_layers"]:
        arms[f"probe-{layer}"] = {str(n): _cell(_probe(ctx, checkpoint, data / "B", layer, n, views, folder)) for n in sizes}
    results = ctx.finish({"classes": {"A": a_names, "B": b_names}, "per_class": sizes,
                          "train_images_per_class": smallest,
                          "source": {**source, "test_accuracy": 1 - source["test_error"], "data": str(data / "A")},
                          "views": views, "arms": arms})  # fmt: skip
    write_outputs(folder, results, format_transfer(results))
    plot_transfer(results, folder / "plot.png")
    return results


def _score(rec: dict[str, Any]) -> dict[str, Any]:
    return {**rec, "test_accuracy": None if rec.get("test_error") is None else 1 - rec["test_error"]}


def _cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"runs": runs, "summary": {k: summary([r.get(k) for r in runs]) for k in ("test_accuracy", "seconds")}}


def _probe(ctx: Context, checkpoint: Path, data: Path, layer: str, n: int, views: str, folder: Path) -> list[dict[str, Any]]:
    """The probe's seeds for one layer and size, kept in folder/probes (reused while the source checkpoint is the same)."""
    stamp = source_stamp(checkpoint)
    key = hashlib.sha256(json.dumps([stamp, str(data.resolve()), layer, n, views, ctx.seeds]).encode()).hexdigest()[:12]
    done = folder / "probes" / f"{layer}-{n or 'all'}-{key}.json"
    if done.is_file():
        return json.loads(done.read_text())
    if ctx.log:
        ctx.log(f"{ctx.exp.name}: probe of {layer}, {n or 'all'} a class, {ctx.seeds if n else 1} seed(s)")
    # one feature cache for every layer and size (the probe checks the checkpoint, store, layer and views)
    cache = folder / "features" / hashlib.sha256(json.dumps([stamp, str(data.resolve())]).encode()).hexdigest()[:12]
    result = probe(checkpoint, data, layer=layer, per_class=n or None, seeds=ctx.seeds, views=views, cache=cache,
                   progress=ctx.progress)  # fmt: skip
    runs = [{"seed": r.seed, "test_accuracy": r.test_accuracy, "seconds": r.seconds, "l2": r.l2,
             "val_accuracy": r.val_accuracy, "train_images": r.train_images} for r in result.results]  # fmt: skip
    done.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(done, json.dumps(runs))
    return runs


LABELS = {"scratch": "from scratch", "finetune": "fine-tuned from A, all layers",
          "finetune-frozen-conv": "fine-tuned from A, conv1..conv5 frozen"}  # fmt: skip


def _label(arm: str) -> str:
    return LABELS.get(arm, f"linear probe on A's {arm.removeprefix('probe-')}")


def _acc(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "diverged"
    return f"{100 * s['mean']:.2f}" + (f" +- {100 * s['std']:.2f}%" if s["n"] > 1 else "%")


def _seconds(s: float | None) -> str:
    return f"{s or 0:.1f} s" if (s or 0) < 10 else f"{s:.0f} s"


def format_transfer(results: dict[str, Any]) -> str:
    """Test accuracy on B (mean +- sd over seeds) and the mean seconds a run, per arm and labels a class."""
    sizes = results["per_class"]
    heads = [f"{n:,} a class" if n else f"all ({results['train_images_per_class']:,} a class)" for n in sizes]
    src = results["source"]
    lines = [*header(results),
             f"A = {', '.join(results['classes']['A'])}; B = {', '.join(results['classes']['B'])}. Source: trained on A, "
             f"{100 * src['test_accuracy']:.2f}% on A's test split ({src['seconds']:.0f} s). Test accuracy on B's test "
             f"split ({results['views']} views), mean +- sd over seeds; seconds a run (the probe: its fit, features cached).",
             "", "| arm | " + " | ".join(heads) + " |", "|---|" + "---|" * len(sizes)]  # fmt: skip
    for arm, cells in results["arms"].items():
        row = [f"{_acc(cells[str(n)]['summary']['test_accuracy'])} ({_seconds(cells[str(n)]['summary']['seconds']['mean'])})"
               for n in sizes]  # fmt: skip
        lines.append(f"| {_label(arm)} | " + " | ".join(row) + " |")
    return "\n".join([*lines, "", footer(results)])


def plot_transfer(results: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Test accuracy on B against labelled images a class (log scale), one line per arm, +- sd."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = results["per_class"]
    x = [n or results["train_images_per_class"] for n in sizes]
    for i, (arm, cells) in enumerate(results["arms"].items()):
        s = [cells[str(n)]["summary"]["test_accuracy"] for n in sizes]
        y = np.array([100 * (v["mean"] if v["mean"] is not None else math.nan) for v in s])
        err = np.array([100 * (v["std"] or 0.0) for v in s])
        ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, color=f"C{i}", label=_label(arm),
                    ls="--" if arm.startswith("probe") else "-")  # fmt: skip
    ax.set_xscale("log")
    ax.set(xlabel="labelled training images a class of B", ylabel="test accuracy on B (%)",
           title=f"{results['experiment']}: A -> B, {results['seeds']} seed(s), {results['epochs']} epoch(s)")  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out)
