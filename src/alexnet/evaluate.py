"""Top-1 / top-5 error, per-class accuracy and the confusion matrix (PAPER.md sections 4 and 6).

Views: the centre crop; its mirror too (`flip`); or the paper's ten crops (four corners and
the centre, and their reflections) with the softmax outputs averaged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import DataError

if TYPE_CHECKING:
    from .data import Store


@dataclass
class EvalResult:
    n: int
    top1_error: float
    top5_error: float
    loss: float
    per_class_accuracy: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted
    views: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "top1_error": self.top1_error, "top5_error": self.top5_error, "loss": self.loss,
            "top1_accuracy": 1 - self.top1_error, "top5_accuracy": 1 - self.top5_error, "views": self.views,
            "per_class_accuracy": self.per_class_accuracy, "confusion": self.confusion,
        }  # fmt: skip


class Accumulator:
    """Running top-k hits, loss and confusion on the device; one host sync at `result()`."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
        self.top5 = torch.zeros((), dtype=torch.int64, device=device)
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.n = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, probs: Tensor, labels: Tensor) -> None:
        k = min(5, probs.shape[1])
        top = probs.topk(k, dim=1).indices
        self.top5 += (top == labels[:, None]).any(dim=1).sum()
        self.confusion += torch.bincount(labels * self.num_classes + top[:, 0], minlength=self.num_classes**2)
        self.loss += F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum").double()
        self.n += labels.numel()

    def all_reduce(self) -> None:
        import torch.distributed as dist

        for t in (self.confusion, self.top5, self.loss, self.n):
            dist.all_reduce(t)

    def result(self, views: str) -> EvalResult:
        n = int(self.n.item())
        conf = self.confusion.view(self.num_classes, self.num_classes).cpu().numpy()
        correct = int(np.trace(conf))
        support = conf.sum(axis=1)
        per_class = np.where(support > 0, np.diag(conf) / np.maximum(support, 1), np.nan)
        return EvalResult(
            n=n,
            top1_error=1 - correct / max(n, 1),
            top5_error=1 - int(self.top5.item()) / max(n, 1),
            loss=float(self.loss.item()) / max(n, 1),
            per_class_accuracy=[float(v) for v in per_class],
            confusion=conf.tolist(),
            views=views,
        )


@torch.no_grad()
def predict_probs(model: nn.Module, views: Tensor, autocast_dtype: torch.dtype | None = None) -> Tensor:
    """Softmax averaged over views: `views` is (B, V, C, H, W) or (B, C, H, W)."""
    if views.dim() == 4:
        views = views[:, None]
    b, v = views.shape[:2]
    flat = views.reshape(b * v, *views.shape[2:])
    with torch.autocast(flat.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(flat)
    return logits.float().softmax(dim=1).view(b, v, -1).mean(dim=1)


def evaluate_batches(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    make_views: Callable[[Tensor], Tensor],
    num_classes: int,
    device: torch.device,
    views: str = "center",
    autocast_dtype: torch.dtype | None = None,
    distributed: bool = False,
) -> EvalResult:
    """Evaluate `model` over uint8 batches; `make_views` turns a uint8 batch (on device) into float views."""
    was_training = model.training
    model.eval()
    acc = Accumulator(num_classes, device)
    try:
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            acc.add(predict_probs(model, make_views(images), autocast_dtype), labels)
    finally:
        model.train(was_training)
    if distributed:
        acc.all_reduce()
    return acc.result(views)


def open_split(data: str | os.PathLike[str], split: str | None = None) -> Store:
    """A dataset folder (then `split`, default val, else test) or one split's folder itself."""
    from .data import open_dataset, open_store

    path = Path(data)
    if (path / "manifest.json").is_file() and split is None:
        return open_store(path)
    splits = open_dataset(path)
    for name in ([split] if split else ["val", "test"]):
        if name in splits:
            return splits[name]
    raise DataError(f"{path} has no split {split or 'val or test'} (found: {', '.join(splits)})")


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    split: str | None = None,
    views: str = "center",
    batch_size: int = 128,
    device: str = "auto",
    model_parallel: str | None = None,
) -> tuple[EvalResult, Store]:
    """Evaluate a checkpoint on a prepared split with the preprocessing the checkpoint records."""
    from .checkpoint import Preprocess, load_checkpoint, model_from_checkpoint
    from .data.loader import Loader
    from .runtime import resolve_device
    from .transforms import eval_views

    ckpt = load_checkpoint(checkpoint)
    store = open_split(data, split)
    dev = resolve_device(device)
    model: nn.Module = model_from_checkpoint(ckpt)
    num_classes = int(ckpt["model_config"]["num_classes"])
    if store.num_classes > num_classes:
        raise DataError(f"the store has {store.num_classes} classes, the checkpoint {num_classes}")
    pp = Preprocess.from_dict(ckpt["preprocess"])
    if store.channels != pp.in_chans:
        raise DataError(f"the store has {store.channels}-channel images, the model takes {pp.in_chans}")
    if model_parallel:
        from .parallel.model_parallel import parse_devices, split_towers

        devices = parse_devices(model_parallel)
        model, dev = split_towers(model, devices), torch.device(devices[0])
    else:
        # channels_last on CPU: the same numbers, 1.6x the NCHW forward here (docs/benchmarks.md)
        model = model.to(dev, memory_format=torch.channels_last if dev.type == "cpu" else torch.preserve_format)
    loader = Loader(store, batch_size, shuffle=False, seed=0, drop_last=False, workers=2)
    result = evaluate_batches(model, loader.epoch_batches(0), eval_views(pp, ckpt.get("mean_image"), dev, views),
                              num_classes, dev, views=views)  # fmt: skip
    return result, store
