"""Fig. 3 (section 6.1): do the two towers specialise, one colour-agnostic, the other colour-specific?

"The kernels on GPU 1 are largely color-agnostic, while the kernels on GPU 2 are largely
color-specific. This kind of specialization occurs during every run and is independent of any
particular random weight initialization."

Colourfulness of a conv1 kernel: subtract its mean, then split every pixel's RGB vector into its
part along the grey axis (1, 1, 1)/sqrt(3) and the rest; the index is the share of the kernel's
energy (sum of squares) off the grey axis. 0: a grey kernel (R = G = B at every pixel); 2/3: a
kernel in one channel only; 1: an opponent kernel (R - G, or B - (R + G)/2) with no grey part.
Tower t of a net whose conv2 has groups=2 holds conv1's kernels [tK/2, (t+1)K/2), the maps that
tower's conv2 reads (section 3.2). The one-tower net (no groups) is the control: its two halves
are split the same way but nothing ties either half to anything.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...figures import _plt, _save, kernel_mosaic
from ...inference import Predictor
from .common import Context, footer, header, pm, summary, write_outputs

GREY = np.ones(3) / np.sqrt(3)


def colourfulness(kernels: np.ndarray | torch.Tensor) -> np.ndarray:
    """(K, 3, h, w) RGB kernels -> (K,) share of each kernel's energy off the grey axis, in [0, 1]."""
    w = np.asarray(kernels, dtype=np.float64)
    if w.ndim != 4 or w.shape[1] != 3:
        raise ValueError(f"expected RGB kernels (K, 3, h, w), got shape {w.shape}")
    w = w - w.mean(axis=(1, 2, 3), keepdims=True)
    grey = np.einsum("kchw,c->khw", w, GREY)  # the component along (1, 1, 1)/sqrt(3) at every pixel
    total = (w**2).sum(axis=(1, 2, 3))
    off = total - (grey**2).sum(axis=(1, 2))
    return np.clip(np.where(total > 0, off / np.maximum(total, 1e-300), 0.0), 0.0, 1.0)  # clip: float rounding


def tower_means(index: np.ndarray, towers: int = 2) -> list[float]:
    """Mean colourfulness of each tower's kernels (consecutive equal halves)."""
    return [float(part.mean()) for part in np.split(np.asarray(index), towers)]


def random_halves(index: np.ndarray, draws: int = 20_000, seed: int = 0) -> dict[str, float]:
    """The gap between the two towers' mean colourfulness against the gaps of random halvings of
    the same kernels: how large a gap chance alone gives this net, and the share of random halves
    whose gap is at least the towers' own (a permutation p-value)."""
    index = np.asarray(index, dtype=np.float64)
    gap = abs(float(np.subtract(*tower_means(index))))
    rng = np.random.default_rng(seed)
    null = np.array([abs(float(np.subtract(*tower_means(rng.permutation(index))))) for _ in range(draws)])
    return {"gap": gap, "random_gap": float(null.mean()), "p": float((null >= gap - 1e-12).mean())}


def run_towers(ctx: Context) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    ctx.prefetch(ctx.arm_runs())
    for arm, own in ctx.exp.arms.items():
        runs = []
        for seed in range(ctx.seeds):
            rec = dict(ctx.run(ctx.config(arm, seed), arm))
            weight, towers = Predictor.load(Path(rec["run"]) / "last.pt", device="cpu").conv1()
            index = colourfulness(weight)
            means = tower_means(index, 2)  # the control is split in halves too
            chance = random_halves(index)
            rec.update(towers=towers, index=index.round(4).tolist(), tower_means=means, gap=chance["gap"],
                       random_gap=chance["random_gap"], p=chance["p"], colour_tower=int(np.argmax(means)))  # fmt: skip
            runs.append(rec)
        arms[arm] = {"overrides": list(own), "runs": runs,
                     "summary": {k: summary([r[k] for r in runs]) for k in ("gap", "test_error")}}  # fmt: skip
    results = ctx.finish({"arms": arms})
    folder = ctx.out / ctx.exp.name
    write_outputs(folder, results, format_towers(results))
    plot_towers(results, folder / "kernels.png")
    return results


def format_towers(results: dict[str, Any]) -> str:
    lines = [*header(results),
             "Mean colourfulness of conv1's kernels per half (0: grey, 1: pure colour contrast):", "",
             "| arm | seed | first half | second half | gap | gap of random halves (mean) | p | the more colourful half "
             "| test error |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, a in results["arms"].items():
        for r in a["runs"]:
            m = r["tower_means"]
            lines.append(f"| {arm} | {r['seed']} | {m[0]:.3f} | {m[1]:.3f} | {r['gap']:.3f} | {r['random_gap']:.3f} | "
                         f"{r['p']:.3f} | {r['colour_tower'] + 1} | {100 * r['test_error']:.2f}% |")  # fmt: skip
    lines += ["", "p: the share of 20,000 random halvings of the same net's kernels with a gap at least as large.",
              "", "| arm | gap between the halves (mean +- std over seeds) |", "|---|---|"]
    lines += [f"| {arm} | {pm(a['summary']['gap'], 1.0, '', 3)} |" for arm, a in results["arms"].items()]
    return "\n".join([*lines, "", footer(results)])


def plot_towers(results: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """conv1's kernels, half by half, for every arm and seed (the paper's Fig. 3), with each half's index."""
    plt = _plt()
    rows = [(arm, r) for arm, a in results["arms"].items() for r in a["runs"]]
    fig, axes = plt.subplots(len(rows), 2, figsize=(7, 2.6 * len(rows)), squeeze=False)
    for (arm, r), ax_row in zip(rows, axes):
        weight, _ = Predictor.load(Path(r["run"]) / "last.pt", device="cpu").conv1()
        halves = np.split(weight.numpy(), 2)
        for t, (ax, half) in enumerate(zip(ax_row, halves)):
            cols = int(math.ceil(math.sqrt(len(half))))
            ax.imshow(kernel_mosaic(half, cols), interpolation="nearest")
            ax.set_title(f"{arm}, seed {r['seed']}, half {t + 1}: colourfulness {r['tower_means'][t]:.2f}", fontsize=8)
            ax.axis("off")
    return _save(fig, out)


def describe_towers(weight: np.ndarray | torch.Tensor) -> str:
    """One line for RGB conv1 kernels: each half's mean colourfulness, their gap, and chance's."""
    index = colourfulness(weight)
    m, chance = tower_means(index), random_halves(index)
    return (f"colourfulness of conv1's halves: {m[0]:.3f} and {m[1]:.3f}, gap {chance['gap']:.3f}; random halves of the "
            f"same kernels: gap {chance['random_gap']:.3f} on average, at least as large in {100 * chance['p']:.1f}%")
