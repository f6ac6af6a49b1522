"""From uint8 store batches to model inputs, for training and for evaluation.

The contract between training and every later use of a checkpoint is `Preprocess` (saved
in the checkpoint) plus the optional mean image: `normalize` applies it, so `evaluate`,
`predict` and `features` see exactly what training saw.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .checkpoint import Preprocess
from .config import DataConfig
from .data import Store
from .data.augment import TrainTransform, center_crop, ten_crop

VIEWS = ("center", "flip", "ten-crop")


def preprocess_for(cfg: DataConfig, store: Store) -> tuple[Preprocess, Tensor | None]:
    """The Preprocess (and mean image) that training with `cfg` on `store` implies."""
    stats = store.stats
    c = store.channels
    mean = tuple(float(v) for v in stats.channel_mean) if cfg.mean == "channel" else (0.0,) * c
    std = tuple(float(v) for v in stats.channel_std) if cfg.divide_std else None
    mean_image = None
    if cfg.mean == "image":  # the paper: subtract the training set's mean 256x256 image (section 2)
        mean_image = torch.as_tensor(stats.mean_image, dtype=torch.float32).permute(2, 0, 1).contiguous()
    pp = Preprocess(resize=store.size, crop=min(cfg.crop, store.size), in_chans=c, scale=1.0, mean=mean, std=std)
    return pp, mean_image


def normalize(x: Tensor, pp: Preprocess, mean_image: Tensor | None) -> Tensor:
    """uint8 or float (B, C, H, W) in store channel order (RGB) -> normalized float model input."""
    x = x.float()
    if pp.channel_order == "BGR":
        x = x.flip(1)
    if mean_image is not None:
        m = mean_image.to(x.device)
        if m.shape[-1] != x.shape[-1] or m.shape[-2] != x.shape[-2]:
            m = center_crop(m[None], x.shape[-1])[0]
        x = x - m
        x = x * pp.scale
    else:
        x = x * pp.scale - torch.tensor(pp.mean, device=x.device).view(1, -1, 1, 1)
    if pp.std is not None:
        x = x / torch.tensor(pp.std, device=x.device).view(1, -1, 1, 1)
    return x


def train_transform(cfg: DataConfig, store: Store) -> TrainTransform:
    """Random crop (+ pad) and flip, PCA lighting (section 4.1), mean and std, in one pass (data/augment.py)."""
    lighting = cfg.lighting if store.channels == 3 else 0.0  # PCA lighting is an RGB augmentation
    return TrainTransform.from_store(store, crop=cfg.crop, pad=cfg.pad, flip=cfg.flip, lighting=lighting,
                                     mean=cfg.mean, divide_std=cfg.divide_std)  # fmt: skip


def eval_views(pp: Preprocess, mean_image: Tensor | None, device: torch.device, mode: str = "center") -> Callable[[Tensor], Tensor]:
    """uint8 (B, C, S, S) -> float views (B, V, C, crop, crop): centre, centre + mirror, or ten crops."""
    if mode not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {mode!r}")
    if mean_image is not None:
        mean_image = mean_image.to(device)

    def apply(images: Tensor) -> Tensor:
        x = normalize(images, pp, mean_image)
        if mode == "ten-crop":
            return ten_crop(x, pp.crop)
        c = center_crop(x, pp.crop)
        if mode == "flip":
            return torch.stack([c, c.flip(-1)], dim=1)
        return c[:, None]

    return apply
