"""From a checkpoint to predictions: the one path evaluate, predict, features, experiments, the
report, the figures and the explorer all take.

    p = Predictor.load("runs/demo")            # a checkpoint file, a run folder, or imported weights
    p.predict(["cat.jpg"], topk=5)             # image files, with the checkpoint's own preprocessing
    p.probs(images)                            # uint8 store images (B, C, S, S) -> softmax (B, classes)
    p.features(images, "fc7")                  # the paper's 4096-d descriptor (section 6.1)

A Predictor holds the model in eval mode on its device, the checkpoint's `Preprocess` (so every
consumer feeds the model what training's validation fed it; a model given without one gets its
own declared input, `Preprocess.for_model`) and the class names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of
from .data import Store
from .data.decode import MAX_PIXELS, BadImage, decode_image, decode_like_torchvision
from .errors import DataError
from .models import activations, conv1_weight, feature_info
from .parallel.model_parallel import parse_devices, split_towers
from .preprocess import Preprocess, eval_views
from .runtime import resolve_device, tune_allocator


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


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]] | None = None  # (class name, probability), best first
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top": [{"class": c, "probability": p} for c, p in self.top or []]}


class Predictor:
    """A checkpoint's model on its device, with the preprocessing and class names it was trained with."""

    def __init__(self, model: nn.Module, preprocess: Preprocess | None = None, class_names: Sequence[str] | None = None,
                 *, device: torch.device | str = "cpu", checkpoint: dict[str, Any] | None = None,
                 source: str | None = None) -> None:  # fmt: skip
        self.model = model.eval()
        self.preprocess = preprocess if preprocess is not None else Preprocess.for_model(model)
        self.device = torch.device(device)
        num = int(getattr(model, "num_classes", 0) or len(class_names or ()))
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num)]
        self.num_classes = len(self.class_names)
        self.checkpoint = checkpoint or {}  # arch, model_config, meta, train_state: what the file said
        self.source = source
        self._views: dict[str, Callable[[Tensor], Tensor]] = {}

    @classmethod
    def load(cls, checkpoint: str | os.PathLike[str], *, device: str = "auto",
             model_parallel: str | tuple[str, str] | None = None) -> Predictor:  # fmt: skip
        """A checkpoint file or a run folder (its best.pt, else last.pt; imported weights are
        checkpoints too). `model_parallel` ("DEV0,DEV1") places the two towers on two devices."""
        tune_allocator()
        ckpt = load_checkpoint(checkpoint)
        model = model_from_checkpoint(ckpt)
        if model_parallel:
            devices = parse_devices(model_parallel)
            dev = torch.device(devices[0])
            model = split_towers(model, devices)
        else:
            dev = resolve_device(device)
            # channels_last on the CPU: the same numbers, ~1.6x the NCHW forward (docs/benchmarks.md)
            model = model.to(dev, memory_format=torch.channels_last if dev.type == "cpu" else torch.preserve_format)
        info = {k: v for k, v in ckpt.items() if k not in ("state_dict", "mean_image")}
        return cls(model, preprocess_of(ckpt), ckpt.get("class_names"), device=dev, checkpoint=info, source=str(checkpoint))

    @property
    def arch(self) -> str:
        return str(self.checkpoint.get("arch", getattr(self.model, "arch", type(self.model).__name__)))

    # ---------------------------------------------------------------- inputs
    def views(self, mode: str = "center") -> Callable[[Tensor], Tensor]:
        """uint8 (B, C, S, S) -> (B, V, C, crop, crop) on this device: "center", "flip" or "ten-crop"."""
        if mode not in self._views:
            self._views[mode] = eval_views(self.preprocess, self.device, mode)
        return self._views[mode]

    def check_store(self, store: Store) -> None:
        """A DataError when the store's images or classes do not fit this model."""
        if store.channels != self.preprocess.in_chans:
            raise DataError(f"the store has {store.channels}-channel images, the model takes {self.preprocess.in_chans}")
        if store.num_classes > self.num_classes:
            raise DataError(f"the store has {store.num_classes} classes, the checkpoint {self.num_classes}")

    def read_image(self, source: str | os.PathLike[str] | bytes, *, min_side: int = 1,
                   max_pixels: int = MAX_PIXELS) -> Tensor:  # fmt: skip
        """An image file (or its bytes) -> uint8 (C, S, S) as the store would hold it: short side to
        `resize`, the central square (with the torchvision geometry: the square around torchvision's
        own centre crop). BadImage (too small, too large, not an image) or OSError."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        pp = self.preprocess
        if pp.geometry == "torchvision":  # imported torchvision weights: torchvision's own eval transform
            arr = decode_like_torchvision(data, pp.resize, pp.crop, min_side=min_side, max_pixels=max_pixels)
        else:
            arr = decode_image(data, pp.resize, pp.in_chans, min_side=min_side, max_pixels=max_pixels)
        return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1)  # writable: torch warns on read-only

    def _batch(self, images: Tensor | np.ndarray) -> Tensor:
        if isinstance(images, np.ndarray):  # store.read gives (B, H, W, C)
            images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        return images.to(self.device, non_blocking=True)

    # ---------------------------------------------------------------- outputs
    @torch.no_grad()
    def probs(self, images: Tensor | np.ndarray, views: str = "center") -> Tensor:
        """Class probabilities (B, classes) of uint8 images (B, C, S, S) (or store rows (B, S, S, C)), on the CPU."""
        return predict_probs(self.model, self.views(views)(self._batch(images))).cpu()

    def top(self, probs: Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """The k most probable (class name, probability) pairs of each row, best first."""
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [[(self.class_names[j], p) for j, p in zip(i, v)] for i, v in zip(indices.tolist(), values.tolist())]

    def predict(self, paths: Sequence[str], topk: int = 5, *, views: str = "center", batch_size: int = 32) -> list[Prediction]:
        """Top-k classes of image files, in the order given; an unreadable file gets its error, not an exception."""
        results: list[Prediction] = []
        for start in range(0, len(paths), batch_size):
            images, ok = [], []
            for p in paths[start : start + batch_size]:
                try:
                    images.append(self.read_image(p))
                    ok.append(Prediction(p))
                except FileNotFoundError:
                    results.append(Prediction(p, error="no such file"))
                except IsADirectoryError:
                    results.append(Prediction(p, error="is a directory"))
                except PermissionError:
                    results.append(Prediction(p, error="permission denied"))
                except (BadImage, OSError) as exc:
                    results.append(Prediction(p, error=f"not a readable image ({exc})"))
            if images:
                for pred, top in zip(ok, self.top(self.probs(torch.stack(images), views), topk)):
                    pred.top = top
                    results.append(pred)
        order = {p: n for n, p in enumerate(paths)}
        return sorted(results, key=lambda r: order[r.path])

    @torch.no_grad()
    def activations(self, images: Tensor | np.ndarray, layers: Sequence[str], views: str = "center") -> dict[str, Tensor]:
        """Named layers' outputs (models.activations) for the views of each image: (B * V, ...) per layer."""
        v = self.views(views)(self._batch(images))
        return activations(self.model, v.reshape(-1, *v.shape[2:]), layers)

    def features(self, images: Tensor | np.ndarray, layer: str = "fc7", views: str = "center") -> Tensor:
        """(B, D) float32 on the CPU: the layer's activations, flattened, averaged over the views."""
        b = images.shape[0]
        out = self.activations(images, [layer], views)[layer]
        return out.reshape(b, -1, out[0].numel()).float().mean(dim=1).cpu()

    def sample(self, store: Store, count: int = 16, *, seed: int = 0, k: int = 5,
               views: str = "center") -> tuple[list[np.ndarray], list[list[tuple[str, float]]], list[str]]:  # fmt: skip
        """`count` images of `store` drawn with `seed`: (images (S, S, C), their top-k, their true class names)."""
        idx = np.sort(np.random.default_rng(seed).choice(len(store), size=min(count, len(store)), replace=False))
        images = store.read(idx)
        truth = [store.class_names[int(store.labels[i])] for i in idx]
        return list(images), self.top(self.probs(images, views), k), truth

    def conv1(self) -> tuple[Tensor, int]:
        """conv1's kernels (K, C, kh, kw) on the CPU, channels in RGB order (Caffe's weights read BGR
        images), and how many towers they feed (Fig. 3)."""
        weight = conv1_weight(self.model).detach().float().cpu()
        return (weight.flip(1) if self.preprocess.channel_order == "BGR" else weight), feature_info(self.model).towers
