"""Checkpoints: one file holds everything needed to rebuild, use and resume a model.

    {
      "format": "alexnet-checkpoint", "version": 1,
      "arch": "alexnet", "model_config": {...create_model options...},
      "state_dict": {...},
      "class_names": ["tench", ...] or None,
      "preprocess": Preprocess.to_dict(),         # how images must be prepared for this model
      "mean_image": uint8-scale float tensor (C, S, S) or None,   # the paper's mean image
      "train_state": {...} or None,               # optimizer, schedule, epoch, step, RNG (train.py)
      "meta": {...}                               # free-form: git commit, versions, metrics
    }

Writes are atomic (temp file in the same folder, fsync, rename), so a crash, a kill or a full
disk leaves the previous file intact. Loads use `torch.load(weights_only=True)`: no pickled
code runs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .files import atomic_open
from .models import empty_model

FORMAT = "alexnet-checkpoint"
VERSION = 1
CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocess:
    """How a raw image becomes a model input (PAPER.md section 2 and 4 for the defaults).

    resize: short side scaled to this, then the central resize x resize square (the store image);
    crop: the side of the centre crop (or the ten crops) fed to the model;
    scale: multiplies uint8 pixel values (1.0 keeps 0-255, 1/255 gives 0-1);
    mean, std: per channel, in scaled units, subtracted / divided (std None: not divided);
    channel_order: "RGB" or "BGR" (Caffe's weights want BGR).
    A checkpoint's mean_image, when present, replaces the per-channel mean (the paper's way).
    """

    resize: int = 256
    crop: int = 224
    in_chans: int = 3
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] | None = None
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        if self.crop > self.resize or self.crop < 1:
            raise ConfigError(f"crop {self.crop} must be in [1, resize={self.resize}]")
        if len(self.mean) != self.in_chans or (self.std is not None and len(self.std) != self.in_chans):
            raise ConfigError(f"mean/std must have {self.in_chans} values")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), None if self.std is None else list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"unknown preprocess keys {sorted(unknown)}")
        d = dict(d)
        d["mean"] = tuple(d.get("mean", (0.0,) * d.get("in_chans", 3)))
        if d.get("std") is not None:
            d["std"] = tuple(d["std"])
        return cls(**d)


def default_preprocess(in_chans: int = 3, resize: int = 256, crop: int = 224) -> Preprocess:
    """Raw 0-255 pixels, no mean: a placeholder until training records the store's statistics."""
    return Preprocess(resize=resize, crop=crop, in_chans=in_chans, mean=(0.0,) * in_chans)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """torch.save to a temp file beside `path`, fsync, then rename over it (files.atomic_open)."""
    with atomic_open(path) as f:
        torch.save(obj, f)
    return Path(path)


def make_checkpoint(
    model: nn.Module,
    *,
    class_names: list[str] | None = None,
    preprocess: Preprocess | None = None,
    mean_image: torch.Tensor | None = None,
    train_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    arch = getattr(model, "arch", None)
    if arch is None:
        raise CheckpointError("model was not built by create_model (no .arch): cannot be checkpointed")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    config = dict(getattr(model, "config", {}))
    for k, v in config.items():  # tuples become lists so weights_only loading accepts them
        if isinstance(v, tuple):
            config[k] = list(v)
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "model_config": config,
        "state_dict": state,
        "class_names": list(class_names) if class_names is not None else None,
        "preprocess": (preprocess or default_preprocess(int(config.get("in_chans", 3)))).to_dict(),
        "mean_image": None if mean_image is None else mean_image.detach().cpu().float(),
        "train_state": train_state,
        "meta": meta or {},
    }


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, **kwargs: Any) -> Path:
    """Atomically write `model` and its metadata (see make_checkpoint) to `path`."""
    return atomic_save(make_checkpoint(model, **kwargs), path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint safely (weights_only). A missing, corrupt or foreign file is a CheckpointError."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path} is a folder with no best.pt or last.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an alexnet checkpoint (use `alexnet import-weights` for other formats)")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt['version']}; this alexnet reads up to {VERSION}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], **overrides: Any) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (strict)."""
    config = dict(ckpt["model_config"])
    config.update(overrides)
    model = empty_model(ckpt["arch"], **config)  # every weight comes from the (strict) load below
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit {ckpt['arch']}: {str(exc).splitlines()[0]}") from None
    return model
