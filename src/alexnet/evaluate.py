"""Top-1 / top-5 error, per-class accuracy and the confusion matrix (PAPER.md sections 4 and 6).

Views: the centre crop; its mirror too (`flip`); or the paper's ten crops (four corners and
the centre, and their reflections) with the softmax outputs averaged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Store
from .data.loader import Loader
from .data.store import open_split
from .inference import Predictor, predict_probs


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


def evaluate_store(predictor: Predictor, store: Store, *, views: str = "center", batch_size: int = 128) -> EvalResult:
    """Evaluate a loaded checkpoint on one prepared split."""
    predictor.check_store(store)
    loader = Loader(store, batch_size, shuffle=False, seed=0, drop_last=False, workers=2)
    return evaluate_batches(predictor.model, loader.epoch_batches(0), predictor.views(views), predictor.num_classes,
                            predictor.device, views=views)  # fmt: skip


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
    """Evaluate a checkpoint on a prepared split (default: val, else test) with the preprocessing it records."""
    predictor = Predictor.load(checkpoint, device=device, model_parallel=model_parallel)
    store = open_split(data, split)
    return evaluate_store(predictor, store, views=views, batch_size=batch_size), store
