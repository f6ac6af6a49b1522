"""Fig. 1 (section 3.1): how many epochs a net needs to reach 25% training error with ReLUs and with
tanh units, each at its own fastest learning rate.

"The learning rates for each network were chosen independently to make training as fast as
possible. No regularization of any kind was employed." So every arm sweeps one grid of learning
rates (fixed in the experiment's definition, the same for both arms) with seed 0 for at most
`sweep_epochs`; the rate that reaches the threshold in the fewest epochs is the arm's (where no
rate reaches it in the sweep, the one with the lowest training error at its end), and seeds
0..n-1 train at that rate for up to the experiment's epochs. A run stops once its running
training error (the error over the batches it trains on, what the paper plots) reaches the
threshold; a rate that diverges or does not get there is reported as such.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...figures import _plt, _save
from .common import Context, epochs_to, footer, header, pm, summary, write_outputs


def run_sweep(ctx: Context) -> dict[str, Any]:
    grid = ctx.exp.options["lrs"]
    stop = f"stop_train_error={ctx.exp.options['threshold']}"
    # the threshold the runs stop at, which `--set stop_train_error=...` may change, is the one reported
    threshold = ctx.config(next(iter(ctx.exp.arms)), 0, stop).stop_train_error
    sweep_epochs = ctx.exp.options["sweep_epochs"]
    short = (f"epochs={sweep_epochs}", f"eval_every={sweep_epochs}")
    arms: dict[str, Any] = {}
    sweep_settings = {lr: (*short, f"optim.lr={lr}", stop) for lr in grid}
    ctx.prefetch([(arm, 0, sweep_settings[lr], False) for arm in ctx.exp.arms for lr in grid])
    for arm, own in ctx.exp.arms.items():
        sweep = []
        for lr in grid:
            rec = ctx.run(ctx.config(arm, 0, *sweep_settings[lr]), f"{arm} at lr {lr} (sweep)", measure=False)
            reached = None if rec["diverged"] else epochs_to(rec["curve"], threshold)
            final = None if rec["diverged"] or not rec["curve"] else rec["curve"][-1][1]
            sweep.append({"lr": lr, "epochs_to": reached, "final_error": final, "diverged": rec["diverged"],
                          "run": rec["run"]})  # fmt: skip
        arms[arm] = {"overrides": list(own), "sweep": sweep, "best_lr": _fastest(sweep)}
    ctx.prefetch([(arm, seed, (f"optim.lr={a['best_lr']}", stop), False) for arm, a in arms.items()
                  if a["best_lr"] is not None for seed in range(ctx.seeds)])  # fmt: skip
    for arm, a in arms.items():
        best = a["best_lr"]
        runs = [] if best is None else [ctx.run(ctx.config(arm, seed, f"optim.lr={best}", stop), f"{arm} at lr {best}",
                                                measure=False) for seed in range(ctx.seeds)]  # fmt: skip
        a.update(runs=runs, summary={"epochs_to": summary([epochs_to(r["curve"], threshold) for r in runs])})
    names = list(arms)
    relu, tanh = (arms[n]["runs"] for n in names[:2])
    ratios = [epochs_to(b["curve"], threshold) / epochs_to(a["curve"], threshold)
              for a, b in zip(relu, tanh) if epochs_to(a["curve"], threshold) and epochs_to(b["curve"], threshold)]  # fmt: skip
    results = ctx.finish({"arms": arms, "threshold": threshold, "lrs": list(grid), "sweep_epochs": sweep_epochs,
                          "ratio": summary(ratios)})  # fmt: skip
    folder = ctx.out / ctx.exp.name
    write_outputs(folder, results, format_sweep(results))
    plot_fig1(results, folder / "plot.png")
    return results


def _fastest(sweep: list[dict[str, Any]]) -> float | None:
    """The rate that reached the threshold first; else the lowest training error at the sweep's end."""
    ranked = [((0, s["epochs_to"], -s["lr"]) if s["epochs_to"] is not None else (1, s["final_error"], -s["lr"]), s["lr"])
              for s in sweep if not s["diverged"] and s["final_error"] is not None]  # fmt: skip
    return min(ranked)[1] if ranked else None


def format_sweep(results: dict[str, Any]) -> str:
    arms, t = results["arms"], results["threshold"]
    names = list(arms)
    lines = [*header(results),
             f"Epochs to {100 * t:.0f}% training error, seed 0, per learning rate (at most {results['sweep_epochs']} "
             "epochs; otherwise the running training error at the end):", "",
             "| learning rate | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
    for i, lr in enumerate(results["lrs"]):
        cells = []
        for n in names:
            s = arms[n]["sweep"][i]
            cells.append("diverged" if s["diverged"] else f"{s['epochs_to']:.2f}" if s["epochs_to"] is not None
                         else "not reached" if s["final_error"] is None  # stopped before its first log point
                         else f"not reached ({100 * s['final_error']:.1f}%)")  # fmt: skip
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    lines += ["", f"At each arm's fastest rate, seeds 0..{results['seeds'] - 1}, at most {results['epochs']} epochs:", "",
              f"| arm | fastest learning rate | epochs to {100 * t:.0f}% (mean +- std over seeds) |", "|---|---|---|"]
    for n in names:
        best = arms[n]["best_lr"]
        lines.append(f"| {n} | {'none reached' if best is None else f'{best:g}'} | {pm(arms[n]['summary']['epochs_to'], 1.0, '')} |")
    r = results["ratio"]
    ratio = f"{r['mean']:.2f} +- {r['std']:.2f}x (seed-paired, n={r['n']})" if r["mean"] is not None else "n/a"
    lines += ["", f"{names[1]} / {names[0]} epochs to {100 * t:.0f}%: {ratio}; paper: about 6x."]
    return "\n".join([*lines, "", footer(results)])


def _per_half_epoch(curve: np.ndarray) -> np.ndarray:
    """(epoch, error) points averaged over half-epoch bins, the last (the stopping point) kept as it is."""
    if len(curve) < 2:
        return curve
    bins = np.floor(curve[:-1, 0] * 2)
    means = [(curve[:-1][bins == b, 0].max(), curve[:-1][bins == b, 1].mean()) for b in np.unique(bins)]
    return np.vstack([np.asarray(means), curve[-1:]])


def plot_fig1(results: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """The replica of Fig. 1 (training error against epochs, ReLU solid, tanh dashed), and the sweep."""
    plt = _plt()
    fig, (ax, ax_s) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.4, 1]})
    styles = ["-", "--", ":", "-."]
    for i, (arm, a) in enumerate(results["arms"].items()):
        for j, r in enumerate(a["runs"]):
            c = _per_half_epoch(np.asarray(r["curve"], dtype=np.float64))  # the logged intervals are noisy
            if len(c):
                ax.plot(c[:, 0], c[:, 1], styles[i % 4], color="black", lw=1.2,
                        label=f"{arm} (lr {a['best_lr']:g})" if j == 0 else None)  # fmt: skip
        lrs = [s["lr"] for s in a["sweep"]]
        ax_s.plot(lrs, [np.nan if s["diverged"] else s["final_error"] for s in a["sweep"]],
                  styles[i % 4] + "o", color="black", label=arm)  # fmt: skip
    ax.axhline(results["threshold"], color="grey", lw=0.8)
    ax.set(xlabel="epochs", ylabel="training error rate", ylim=(0, 0.8), title="training error (one line per seed)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax_s.axhline(results["threshold"], color="grey", lw=0.8)
    ax_s.set(xscale="log", xlabel="learning rate", ylabel="training error at the end", ylim=(0, 1),
             title=f"the sweep: seed 0, {results['sweep_epochs']} epochs or until {100 * results['threshold']:.0f}%")  # fmt: skip
    ax_s.set_xticks(results["lrs"], [f"{lr:g}" for lr in results["lrs"]], fontsize=7)
    ax_s.minorticks_off()
    if ax_s.get_legend_handles_labels()[0]:
        ax_s.legend(fontsize=8)
    for a in (ax, ax_s):
        a.grid(alpha=0.3)
    fig.suptitle(f"{results['experiment']}: Fig. 1 re-run, {results['seeds']} seed(s)", fontsize=10)
    return _save(fig, out)
