"""The linear probe: a logistic regression on one layer's features of a trained net.

    result = probe("runs/cifar-a", "data/cifar-b", layer="fc7", per_class=100, seeds=3)
    result.mean_test_accuracy, result.results[0].per_class_accuracy

Section 6.1 of the paper calls fc7 a generic image descriptor; DeCAF (Donahue et al., 2013) put
a linear classifier on it for other datasets. The features come from the existing extraction
(analysis/features.py, the checkpoint's own preprocessing), one folder per split, kept in `cache`
and reused while the checkpoint, store, layer and views are the same. The classifier is
multinomial logistic regression fitted by full-batch L-BFGS on standardised features (the
standardisation from the training images only); its L2 weight is chosen from `L2_GRID` by
accuracy on the store's val split (or, without one, a fixed tenth of each training class set
aside), then scored once on the test split. `per_class=N` trains on N images a class, drawn per
seed; without it, on the whole training split (seeds then differ in nothing and one is run).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import open_dataset
from ..data.loader import balanced_subset
from ..errors import ConfigError, DataError
from .features import FeatureSet, extract_features, open_features

# L2 weights tried (on the mean cross-entropy; standardised features), the strongest first so
# each fit starts from the last one's solution
L2_GRID = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5)
VAL_FRACTION = 0.1  # of each training class, set aside for the choice when the store has no val split


@dataclass(frozen=True)
class ProbeSeed:
    seed: int
    train_images: int
    l2: float  # the chosen L2 weight
    val_accuracy: float
    test_accuracy: float
    per_class_accuracy: list[float]  # on the test split, in class order
    seconds: float


@dataclass(frozen=True)
class ProbeResult:
    source: str
    data: str
    layer: str
    dim: int
    per_class: int | None
    val_split: str  # "val", or "train (held out)"
    class_names: list[str]
    results: list[ProbeSeed]

    @property
    def test_accuracies(self) -> list[float]:
        return [r.test_accuracy for r in self.results]

    @property
    def mean_test_accuracy(self) -> float:
        return float(np.mean(self.test_accuracies))

    @property
    def std_test_accuracy(self) -> float:
        return float(np.std(self.test_accuracies, ddof=1)) if len(self.results) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean_test_accuracy"], d["std_test_accuracy"] = self.mean_test_accuracy, self.std_test_accuracy
        return d


def fit_logistic(x: Tensor, y: Tensor, num_classes: int, l2: float, *, init: tuple[Tensor, Tensor] | None = None,
                 max_iter: int = 200) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(W (D, C), b (C,)) minimising mean cross-entropy + l2/2 |W|^2 by full-batch L-BFGS."""
    w = torch.zeros(x.shape[1], num_classes) if init is None else init[0].clone()
    b = torch.zeros(num_classes) if init is None else init[1].clone()
    w.requires_grad_(True), b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(torch.addmm(b, x, w), y) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def predict(x: Tensor, wb: tuple[Tensor, Tensor]) -> Tensor:
    return torch.addmm(wb[1], x, wb[0]).argmax(1)


def per_class_accuracy(pred: Tensor, y: Tensor, num_classes: int) -> list[float]:
    hits = torch.bincount(y[pred == y], minlength=num_classes).double()
    counts = torch.bincount(y, minlength=num_classes).double()
    return [float(h / c) if c else math.nan for h, c in zip(hits, counts)]


def choose_and_fit(train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], num_classes: int,
                   grid: tuple[float, ...] = L2_GRID) -> tuple[float, float, tuple[Tensor, Tensor]]:  # fmt: skip
    """(l2, validation accuracy, (W, b)) of the grid's best L2 weight on `val` (ties: the stronger)."""
    best: tuple[float, float, tuple[Tensor, Tensor]] | None = None
    wb = None
    for l2 in grid:
        wb = fit_logistic(*train, num_classes, l2, init=wb)
        acc = float((predict(val[0], wb) == val[1]).double().mean())
        if best is None or acc > best[1]:
            best = (l2, acc, wb)
    assert best is not None
    return best


def probe(source: str | os.PathLike[str], data: str | os.PathLike[str], *, layer: str = "fc7",
          per_class: int | None = None, seeds: int = 1, views: str = "center", cache: str | os.PathLike[str] | None = None,
          device: str = "auto", batch_size: int = 256, progress: bool = False) -> ProbeResult:  # fmt: skip
    """The linear probe of `source`'s `layer` on the prepared dataset `data` (see the module's docstring)."""
    if per_class is not None and per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    if seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {seeds}")
    splits = open_dataset(data)
    for need in ("train", "test"):
        if need not in splits:
            raise DataError(f"{data} has no {need} split, which the probe needs (found: {', '.join(splits)})")
    names = ["train", "test"] + (["val"] if "val" in splits else [])
    with tempfile.TemporaryDirectory(prefix="alexnet-probe-") as tmp:
        root = Path(cache) if cache is not None else Path(tmp)
        sets = {s: _features(source, data, s, layer, views, root, device, batch_size, progress) for s in names}
        return _probe(sets, str(source), str(data), layer, per_class, seeds, splits["train"].class_names)


def _features(source: str | os.PathLike[str], data: str | os.PathLike[str], split: str, layer: str, views: str,
              root: Path, device: str, batch_size: int, progress: bool) -> FeatureSet:  # fmt: skip
    """One split's features, from the cache when they were taken from the same checkpoint file
    (path and modification time), store, layer and views."""
    dest = root / f"{layer}-{views}-{split}"
    ckpt = Path(source)
    stamp = source_stamp(ckpt)
    if (dest / "meta.json").is_file():
        fs = open_features(dest)
        m = fs.meta
        if (m.get("layer"), m.get("views"), m.get("split"), m.get("source_stamp"), m.get("store")) == (
            layer, views, split, stamp, str((Path(data) / split).resolve())):  # fmt: skip
            return fs
    fs = extract_features(source, data, dest, layer=layer, split=split, dtype="float32", views=views,
                          batch_size=batch_size, device=device, overwrite=True, progress=progress)  # fmt: skip
    fs.meta["source_stamp"] = stamp
    (dest / "meta.json").write_text(json.dumps(fs.meta, indent=1) + "\n")
    return fs


def source_stamp(path: Path) -> str:
    """The checkpoint file behind `path` (a run folder's best.pt or last.pt) and its mtime."""
    if path.is_dir():
        path = next((path / n for n in ("best.pt", "last.pt") if (path / n).is_file()), path)
    return f"{path.resolve()}@{path.stat().st_mtime_ns}" if path.exists() else str(path)


def _probe(sets: dict[str, FeatureSet], source: str, data: str, layer: str, per_class: int | None, seeds: int,
           class_names: list[str]) -> ProbeResult:  # fmt: skip
    c = len(class_names)
    x_all = {s: torch.from_numpy(np.array(fs.features, dtype=np.float32)) for s, fs in sets.items()}
    y_all = {s: torch.from_numpy(np.asarray(fs.labels, dtype=np.int64)) for s, fs in sets.items()}
    pool = np.arange(len(y_all["train"]))
    if "val" in sets:
        val_split, val_idx = "val", None
    else:  # a fixed tenth of each class (seed 0), the same for every seed
        val_split = "train (held out)"
        rng = np.random.default_rng(0)
        labels = y_all["train"].numpy()
        val_idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == k))[: max(1, int(VAL_FRACTION * (labels == k).sum()))]
                                          for k in range(c)]))  # fmt: skip
        pool = np.setdiff1d(pool, val_idx)
    runs = range(seeds) if per_class is not None else range(1)
    results = []
    for seed in runs:
        t0 = time.perf_counter()
        idx = _draw(y_all["train"].numpy(), pool, per_class, seed, c, class_names)
        x_train, y_train = x_all["train"][idx], y_all["train"][idx]
        mean, std = x_train.mean(0), x_train.std(0, unbiased=False).clamp_min(1e-6)

        def norm(x: Tensor) -> Tensor:
            return (x - mean) / std

        if val_idx is None:
            val = (norm(x_all["val"]), y_all["val"])
        else:
            val = (norm(x_all["train"][val_idx]), y_all["train"][val_idx])
        l2, val_acc, wb = choose_and_fit((norm(x_train), y_train), val, c)
        pred = predict(norm(x_all["test"]), wb)
        y_test = y_all["test"]
        results.append(ProbeSeed(seed, len(idx), l2, val_acc, float((pred == y_test).double().mean()),
                                 per_class_accuracy(pred, y_test, c), round(time.perf_counter() - t0, 3)))  # fmt: skip
    return ProbeResult(source, data, layer, int(x_all["train"].shape[1]), per_class, val_split, list(class_names), results)


def _draw(labels: np.ndarray, pool: np.ndarray, per_class: int | None, seed: int, c: int,
          class_names: list[str]) -> np.ndarray:  # fmt: skip
    """The training rows: all of `pool`, or `per_class` of each class drawn with `seed`: the images
    that `alexnet train data.train_subset=C*N data.train_subset_seed=SEED` trains on, when `pool`
    is the whole training split."""
    if per_class is None:
        return pool
    for k in range(c):
        have = int((labels[pool] == k).sum())
        if have < per_class:
            raise DataError(f"class {class_names[k]!r} has {have} training images, fewer than --per-class {per_class}")
    return pool[balanced_subset(labels[pool], per_class * c, seed)]
