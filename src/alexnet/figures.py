"""Figures a person wants to look at: training curves, confusion matrix, conv1 kernels (Fig. 3),
test images with their top predictions, query images with their nearest neighbours (Fig. 4).

Every function writes one PNG and returns its path; matplotlib runs headless (Agg).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

_DPI = 110


def _plt() -> Any:
    # imported on first use: matplotlib costs ~0.5 s at start-up, and the backend must be set before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | os.PathLike[str]) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI, bbox_inches="tight")
    _plt().close(fig)
    return out


def _to_display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) or (H, W, C) uint8/float -> (H, W[, 3]) for imshow, with a cmap for grayscale."""
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 3 and img.shape[-1] == 1:
        return img[..., 0], "gray"
    return img, None


def training_curves(metrics: Sequence[dict[str, Any]], out: str | os.PathLike[str], title: str = "") -> Path:
    """Loss and top-1 error against epoch, train (per interval) and validation; lr drops marked."""
    plt = _plt()
    train = [m for m in metrics if "loss" in m and "epoch" in m and "event" not in m]
    val = [m for m in metrics if "val_top1_error" in m]
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        ax_loss.plot([m["epoch"] for m in train], [m["loss"] for m in train], label="train loss", lw=1)
        ax_err.plot([m["epoch"] for m in train], [100 * m["train_error"] for m in train], label="train top-1", lw=1)
    drops = [m["epoch"] for m in val if m.get("lr_dropped")]
    # step schedules leave no lr_dropped flag: a fall of the logged lr by 5x or more between records is a drop
    drops += [b["epoch"] for a, b in zip(train, train[1:]) if b.get("lr", 0) > 0 and a.get("lr", 0) >= 5 * b["lr"]
              and not any(abs(b["epoch"] - d) < 0.5 for d in drops)]  # fmt: skip
    if val:
        ax_loss.plot([m["epoch"] for m in val], [m["val_loss"] for m in val], "o-", label="validation loss")
        ax_err.plot([m["epoch"] for m in val], [100 * m["val_top1_error"] for m in val], "o-", label="validation top-1")
        ax_err.plot([m["epoch"] for m in val], [100 * m["val_top5_error"] for m in val], "s--", label="validation top-5", ms=4)
    for e in sorted(set(drops)):
        for ax in (ax_loss, ax_err):
            ax.axvline(e, color="grey", ls=":", lw=1)
        ax_err.annotate("lr drop", (e, ax_err.get_ylim()[1]), fontsize=8, ha="center", va="top")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_err.set(xlabel="epoch", ylabel="error (%)", title="error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a run too short to log has nothing to label: no legend, no warning
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def confusion_matrix(confusion: Sequence[Sequence[int]], class_names: Sequence[str], out: str | os.PathLike[str]) -> Path:
    """Row-normalised confusion matrix with counts; readable up to ~30 classes, a heat map beyond."""
    plt = _plt()
    conf = np.asarray(confusion, dtype=np.float64)
    n = len(conf)
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    size = min(14, max(5, 0.55 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), [str(c)[:14] for c in class_names], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), [str(c)[:14] for c in class_names], fontsize=8)
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(j, i, f"{int(conf[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (rows normalised)")
    return _save(fig, out)


def kernel_mosaic(kernels: np.ndarray, cols: int, gap: int = 1) -> np.ndarray:
    """(K, C, h, w) -> one (H, W, 3) or (H, W) float image in [0, 1]: each kernel scaled to [0, 1] on its
    own (as the paper's Fig. 3 shows them, so colour structure is visible), separated by white gaps."""
    k, c, h, w = kernels.shape
    rows = int(math.ceil(k / cols))
    lo = kernels.reshape(k, -1).min(1)[:, None, None, None]
    hi = kernels.reshape(k, -1).max(1)[:, None, None, None]
    scaled = (kernels - lo) / np.maximum(hi - lo, 1e-12)
    mosaic = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, c), np.float32)
    for i in range(k):
        r, q = divmod(i, cols)
        mosaic[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = scaled[i].transpose(1, 2, 0)
    return mosaic[..., 0] if c == 1 else mosaic if c == 3 else mosaic[..., :3]


def conv1_kernels(weight: torch.Tensor, out: str | os.PathLike[str], towers: int = 2) -> Path:
    """conv1's kernels as small colour images (Fig. 3), each tower's half side by side.

    Tower t holds the kernels whose maps feed tower t of the grouped conv2 (section 3.2); in the
    paper one tower's kernels came out largely colour-agnostic, the other's colour-specific.
    """
    plt = _plt()
    w = weight.detach().float().cpu().numpy()  # (K, C, kh, kw)
    k = w.shape[0]
    towers = towers if towers >= 1 and k % towers == 0 and k >= 2 * towers else 1
    per = k // towers
    cols = int(math.ceil(math.sqrt(per)))
    rows = int(math.ceil(per / cols))
    # ~0.05 inch per kernel pixel, so 11x11 kernels come out about 0.55 inch each; at least 3 inch per tower
    inch = max(3.0, 0.05 * cols * (w.shape[3] + 1))
    fig, axes = plt.subplots(1, towers, figsize=(inch * towers + 0.4 * (towers - 1), inch * rows / cols * (w.shape[2] + 1)
                                                 / (w.shape[3] + 1) + 0.8), squeeze=False)  # fmt: skip
    for t in range(towers):
        ax = axes[0, t]
        mosaic = kernel_mosaic(w[t * per : (t + 1) * per], cols)
        ax.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, interpolation="nearest")
        ax.set_title(f"tower {t + 1}: kernels {t * per + 1}-{(t + 1) * per}" if towers > 1 else f"{k} kernels", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"conv1: {k} kernels of {w.shape[2]}x{w.shape[3]}x{w.shape[1]}", fontsize=10)
    return _save(fig, out)


def predictions_grid(
    images: Sequence[np.ndarray],
    top: Sequence[Sequence[tuple[str, float]]],
    out: str | os.PathLike[str],
    truth: Sequence[str] | None = None,
    cols: int = 4,
) -> Path:
    """Each image beside a bar chart of its top-k classes (the paper's Fig. 4, left); true class in green."""
    plt = _plt()
    n = len(images)
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(5.2 * cols, 1.9 * rows),
                             gridspec_kw={"width_ratios": [1, 1.6] * cols, "wspace": 0.7})  # fmt: skip
    axes = np.atleast_2d(axes)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        ax_img, ax_bar = axes[r, 2 * c], axes[r, 2 * c + 1]
        img, cmap = _to_display(np.asarray(images[i]))
        ax_img.imshow(img, cmap=cmap)
        if truth is not None:
            ax_img.set_title(str(truth[i])[:20], fontsize=8)
        names = [t[0] for t in top[i]][::-1]
        probs = [t[1] for t in top[i]][::-1]
        colors = ["tab:green" if truth is not None and name == truth[i] else "tab:red" if j == len(names) - 1 else "tab:blue"
                  for j, name in enumerate(names)]  # fmt: skip
        ax_bar.axis("on")
        ax_bar.barh(range(len(names)), probs, color=colors)
        ax_bar.set_yticks(range(len(names)), [str(nm)[:18] for nm in names], fontsize=7)
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=6)
        for side in ("top", "right"):
            ax_bar.spines[side].set_visible(False)
    return _save(fig, out)


def neighbors_grid(
    queries: Sequence[np.ndarray],
    neighbors: Sequence[Sequence[np.ndarray]],
    out: str | os.PathLike[str],
    query_labels: Sequence[str] | None = None,
    neighbor_labels: Sequence[Sequence[str]] | None = None,
) -> Path:
    """First column the query images, then their nearest training images by fc7 distance (Fig. 4, right)."""
    plt = _plt()
    rows, k = len(queries), max(len(n) for n in neighbors)
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.5 * (k + 1), 1.6 * rows))
    axes = np.atleast_2d(axes)
    for ax in axes.flat:
        ax.axis("off")
    for r in range(rows):
        img, cmap = _to_display(np.asarray(queries[r]))
        axes[r, 0].imshow(img, cmap=cmap)
        axes[r, 0].set_title(("query: " + str(query_labels[r]))[:22] if query_labels else "query", fontsize=8,
                             fontweight="bold")  # fmt: skip
        for spine in axes[r, 0].spines.values():
            spine.set(visible=True, color="black", linewidth=2)
        axes[r, 0].axis("on")
        axes[r, 0].set_xticks([]), axes[r, 0].set_yticks([])
        for j, nb in enumerate(neighbors[r]):
            img, cmap = _to_display(np.asarray(nb))
            axes[r, j + 1].imshow(img, cmap=cmap)
            if neighbor_labels:
                # green: same class as the query, red: another class (only when the query's class is known)
                same = query_labels is not None and str(neighbor_labels[r][j]) == str(query_labels[r])
                color = "black" if query_labels is None else "tab:green" if same else "tab:red"
                axes[r, j + 1].set_title(str(neighbor_labels[r][j])[:16], fontsize=8, color=color)
    return _save(fig, out)
