"""The common experiment: every arm trained with every seed, compared by test error, training error
(eval mode) and their gap, with seed-paired differences from the reference arm."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...figures import _plt, _save
from .common import Context, footer, header, paired, pm, summary, write_outputs

KEYS = ("test_error", "train_error", "gap")


def run_arms(ctx: Context) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    ctx.prefetch(ctx.arm_runs())
    for arm, own in ctx.exp.arms.items():
        runs = [ctx.run(ctx.config(arm, seed), arm) for seed in range(ctx.seeds)]
        arms[arm] = {"overrides": list(own), "runs": runs, "summary": {k: summary([r.get(k) for r in runs]) for k in KEYS}}
    results = ctx.finish({"arms": arms, "paired": paired(arms)})
    folder = ctx.out / ctx.exp.name
    write_outputs(folder, results, format_arms(results))
    plot_arms(results, folder / "plot.png")
    return results


def format_arms(results: dict[str, Any]) -> str:
    """Mean +- std over seeds per arm, and each arm's seed-paired difference from the first."""
    lines = [*header(results),
             "| arm | test error | train error (eval mode) | gap (test - train) | test error vs first arm (paired) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for i, (arm, a) in enumerate(results["arms"].items()):
        s = a["summary"]
        diff = ""
        if i:
            d = results["paired"][arm]["test_error"]
            diff = f"{100 * d['mean']:+.2f} +- {100 * d['std']:.2f}%" if d["mean"] is not None else "n/a"
        lines.append(f"| {arm} | {pm(s['test_error'])} | {pm(s['train_error'])} | {pm(s['gap'])} | {diff} |")
    return "\n".join([*lines, "", footer(results)])


def plot_arms(results: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Left: running training error against epoch (mean over seeds per arm). Right: final errors, mean +- std."""
    plt = _plt()
    fig, (ax_c, ax_b) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.4, 1]})
    arms = results["arms"]
    for i, (arm, a) in enumerate(arms.items()):
        curves = [np.asarray(r["curve"], dtype=np.float64) for r in a["runs"] if r["curve"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        stack = np.stack([c[:n] for c in curves])
        x, y = stack[0, :, 0], 100 * stack[:, :, 1]
        ax_c.plot(x, y.mean(0), color=f"C{i}", label=arm, lw=1.5)
        if len(curves) > 1:
            ax_c.fill_between(x, y.mean(0) - y.std(0, ddof=1), y.mean(0) + y.std(0, ddof=1), color=f"C{i}", alpha=0.2)
    ax_c.set(xlabel="epoch", ylabel="training error (%), running", title="training error (mean +- std over seeds)")
    ax_c.grid(alpha=0.3)
    if ax_c.get_legend_handles_labels()[0]:
        ax_c.legend(fontsize=8)
    names = list(arms)
    pos = np.arange(len(names))
    for j, (key, label) in enumerate((("test_error", "test"), ("train_error", "train (eval mode)"))):
        means = [100 * (arms[a]["summary"][key]["mean"] or math.nan) for a in names]
        stds = [100 * (arms[a]["summary"][key]["std"] or 0.0) for a in names]
        ax_b.bar(pos + (j - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3, label=label, color=f"C{j + 3}")
    ax_b.set_xticks(pos, names, rotation=20 if len(names) > 3 else 0, ha="right" if len(names) > 3 else "center", fontsize=8)
    ax_b.set(ylabel="top-1 error (%)", title="final errors")
    ax_b.grid(alpha=0.3, axis="y")
    ax_b.legend(fontsize=8)
    fig.suptitle(f"{results['experiment']}: {results['seeds']} seed(s), {results['epochs']} epoch(s)", fontsize=10)
    return _save(fig, out)
