"""How a stored image becomes a model input, at training and at every later use of a checkpoint
(PAPER.md sections 2 and 4).

`Preprocess` is the contract: training builds it from the store's statistics and its data
config, saves it in every checkpoint, and evaluate, predict, features and the explorer read it
back, so they all feed the model exactly what training's validation fed it. `normalize` is the
one arithmetic both sides use:

    model input = ((pixels + offset) * scale - mean) / std        (per channel)
                = ((pixels + offset) - mean image patch) * scale / std   (with a mean image)

At training the offset is PCA lighting and the crop is random (`TrainTransform`: the ops of
data/augment.py, which says where their random draws come from); at test there is no offset
and the views are the centre crop, its mirror, or the ten crops (`eval_views`).
Published weights come with their own Preprocess (`TORCHVISION`, `CAFFE_BVLC`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from .config import DataConfig
from .data import Store
from .data.augment import Batch, Op, center_crop, per_channel_, run_ops, ten_crop, to_float_plus, train_ops
from .errors import CheckpointError, ConfigError
from .models import InputConfig, input_config
from .models.owt import TORCHVISION_INPUT

CHANNEL_ORDERS = ("RGB", "BGR")
GEOMETRIES = ("square", "torchvision")  # how an image file becomes the resize x resize image (Preprocess)
VIEWS = ("center", "flip", "ten-crop")
# A channel whose training pixels never vary has std 0; dividing by it would turn every test
# pixel that differs from the constant into inf. Such channels are left unscaled (std 1).
MIN_STD = 1e-6


@dataclass(frozen=True)
class Preprocess:
    """How a raw image becomes a model input.

    resize: short side scaled to this, then the central resize x resize square (the store image);
    crop: the side of the centre crop (or the ten crops) fed to the model;
    scale: multiplies uint8 pixel values (1.0 keeps 0-255, 1/255 gives 0-1);
    mean, std: per channel, in scaled units, subtracted / divided (std None: not divided);
    channel_order: "RGB" or "BGR" (Caffe's weights want BGR);
    mean_image: (C, resize, resize) in 0-255 units, or None; when present it is subtracted
    instead of the per-channel mean (the paper's way, section 2);
    geometry: how an image file becomes the resize x resize image: "square" (short side to
    `resize`, the central square: what `prepare` stores) or "torchvision" (torchvision's
    Resize(resize) + CenterCrop(crop) on the image as Pillow decodes it: the whole image
    resized with its long side truncated, no EXIF rotation, the crop's offset rounded as
    torchvision does; the square kept is the one whose centre crop is torchvision's).
    """

    resize: int = 256
    crop: int = 224
    in_chans: int = 3
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] | None = None
    channel_order: str = "RGB"
    mean_image: Tensor | None = field(default=None, compare=False, repr=False)
    geometry: str = "square"

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        if self.geometry not in GEOMETRIES:
            raise ConfigError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.geometry == "torchvision" and (self.resize - self.crop) % 2:
            raise ConfigError(f"the torchvision geometry needs resize - crop even, got {self.resize} and {self.crop}")
        if self.crop > self.resize or self.crop < 1:
            raise ConfigError(f"crop {self.crop} must be in [1, resize={self.resize}]")
        if len(self.mean) != self.in_chans or (self.std is not None and len(self.std) != self.in_chans):
            raise ConfigError(f"mean/std must have {self.in_chans} values")
        if self.mean_image is not None and tuple(self.mean_image.shape) != (self.in_chans, self.resize, self.resize):
            raise ConfigError(f"mean image {tuple(self.mean_image.shape)} does not fit ({self.in_chans}, {self.resize}, {self.resize})")

    # ---------------------------------------------------------------- construction
    @classmethod
    def raw(cls, in_chans: int = 3, resize: int = 256, crop: int = 224) -> Preprocess:
        """0-255 pixels, nothing subtracted, at the sizes given."""
        return cls(resize=resize, crop=crop, in_chans=in_chans, mean=(0.0,) * in_chans)

    @classmethod
    def for_input(cls, data: InputConfig) -> Preprocess:
        """A model's declared input as a Preprocess: its size and channels, its default normalisation."""
        return cls(resize=data.test_resize, crop=data.input_size, in_chans=data.in_chans, scale=data.scale,
                   mean=data.mean or (0.0,) * data.in_chans, std=data.std, geometry=data.geometry)  # fmt: skip

    @classmethod
    def for_model(cls, model: nn.Module) -> Preprocess:
        """What a model built outside training (create_model) gets: its own declared input (input_config)."""
        return cls.for_input(input_config(model))

    @classmethod
    def for_training(cls, store: Store, cfg: DataConfig) -> Preprocess:
        """What training with `cfg` on `store` feeds the model at test time (its statistics, its crop)."""
        stats, c = store.stats, store.channels
        mean = tuple(float(v) for v in stats.channel_mean) if cfg.mean == "channel" else (0.0,) * c
        std = tuple(float(v) if v > MIN_STD else 1.0 for v in stats.channel_std) if cfg.divide_std else None
        mean_image = None
        if cfg.mean == "image":  # the paper subtracts the training set's mean image (section 2)
            mean_image = torch.as_tensor(stats.mean_image, dtype=torch.float32).permute(2, 0, 1).contiguous()
        return cls(resize=store.size, crop=min(cfg.crop, store.size), in_chans=c, scale=1.0, mean=mean, std=std,
                   mean_image=mean_image)  # fmt: skip

    # ---------------------------------------------------------------- the checkpoint's copy
    def to_dict(self) -> dict[str, Any]:
        """Everything but the mean image (checkpoints store it as a tensor of its own)."""
        d = asdict(replace(self, mean_image=None))
        d.pop("mean_image")
        d["mean"], d["std"] = list(self.mean), None if self.std is None else list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], mean_image: Tensor | None = None) -> Preprocess:
        known = {f.name for f in fields(cls)} - {"mean_image"}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"unknown preprocess keys {sorted(unknown)}")
        d = dict(d)
        d["mean"] = tuple(d.get("mean", (0.0,) * d.get("in_chans", 3)))
        if d.get("std") is not None:
            d["std"] = tuple(d["std"])
        return cls(**d, mean_image=None if mean_image is None else mean_image.float())


def _stats_tensor(values: tuple[float, ...], device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)


def normalize(x: Tensor, pp: Preprocess, *, offset: Tensor | None = None, mean_patch: Tensor | None = None) -> Tensor:
    """uint8 or float (B, C, H, W) in the store's channel order (RGB) -> float32 model input.

    offset: per image and channel (B, C) in pixel units, added first (PCA lighting at training);
    mean_patch: the mean image under each crop, (B or 1, C, H, W); by default the centre of
    `pp.mean_image`. Channels-last input stays channels-last.
    """
    dev = x.device
    if pp.channel_order == "BGR":
        x = x.flip(1)
        offset = None if offset is None else offset.flip(1)
    mean_image = pp.mean_image
    shift = None if offset is None else offset.to(dev, torch.float32) * pp.scale
    if mean_image is None and any(pp.mean):
        neg_mean = -_stats_tensor(pp.mean, dev)
        shift = neg_mean.expand(x.shape[0], -1) if shift is None else shift + neg_mean
    if pp.scale == 1.0:
        out = to_float_plus(x, shift)
    else:
        out = to_float_plus(x).mul_(pp.scale)
        if shift is not None:
            per_channel_(out, shift, "add")
    if mean_image is not None:
        if mean_patch is None:
            mean_patch = center_crop(mean_image.to(dev), x.shape[-1])[None]
        out.sub_(mean_patch if pp.scale == 1.0 else mean_patch * pp.scale)
    if pp.std is not None:
        per_channel_(out, 1.0 / _stats_tensor(pp.std, dev), "mul")
    return out


def eval_views(pp: Preprocess, device: torch.device | str = "cpu", mode: str = "center") -> Callable[[Tensor], Tensor]:
    """uint8 store images (B, C, S, S) -> float views (B, V, C, crop, crop): the centre crop (V=1),
    the centre and its mirror (V=2), or the paper's ten crops (V=10: four corners and the centre,
    then their mirrors; section 4.1)."""
    if mode not in VIEWS:
        raise ConfigError(f"views must be one of {', '.join(VIEWS)}, got {mode!r}")
    device = torch.device(device)
    if pp.mean_image is not None:  # moved once, not per batch
        pp = replace(pp, mean_image=pp.mean_image.to(device))

    def apply(images: Tensor) -> Tensor:
        x = normalize(images, pp)
        if mode == "ten-crop":
            return ten_crop(x, pp.crop)
        c = center_crop(x, pp.crop)
        if mode == "flip":
            return torch.stack([c, c.flip(-1)], dim=1)
        return c[:, None]

    return apply


@dataclass(frozen=True, eq=False)
class TrainTransform:
    """uint8 store batch (B, C, S, S) -> float training batch: the augmentation ops (random crop,
    flip, PCA lighting; data/augment.py, which also says where each op's random draws come from),
    then `normalize` with the run's Preprocess (PAPER.md section 4.1). Step `step` of a run seeded
    `seed` gives the same batch every time."""

    preprocess: Preprocess
    ops: tuple[Op, ...]  # in the order they act (augment.TRAIN_OPS)
    _on_device: dict = field(default_factory=dict, repr=False, init=False)

    @classmethod
    def for_training(cls, store: Store, cfg: DataConfig, preprocess: Preprocess | None = None) -> TrainTransform:
        return cls(preprocess or Preprocess.for_training(store, cfg), train_ops(cfg, store))

    def _device(self, device: torch.device) -> tuple[Preprocess, tuple[Op, ...]]:
        key = str(device)
        if key not in self._on_device:  # moved once, not per batch
            pp = self.preprocess
            if pp.mean_image is not None:
                pp = replace(pp, mean_image=pp.mean_image.to(device))
            self._on_device[key] = (pp, tuple(op.to(device) for op in self.ops))
        return self._on_device[key]

    def draw(self, x: Tensor, seed: int, step: int) -> Batch:
        """What the ops decide for batch x at `step` of a run seeded `seed`, before anything is cut."""
        pp, ops = self._device(x.device)
        return run_ops(ops, Batch.whole(x, pp.mean_image), seed, step)

    def __call__(self, x: Tensor, seed: int, step: int) -> Tensor:
        batch = self.draw(x, seed, step)
        crops, patch = batch.cut()  # each crop loses its own patch of the mean image
        return normalize(crops, self._device(x.device)[0], offset=batch.offset, mean_patch=patch)


# Published weights and the preprocessing they were trained with.
# torchvision's AlexNet_Weights.IMAGENET1K_V1: short side 256, centre 224, 0-1, ImageNet mean/std, RGB
# (alexnet-owt's declared input).
TORCHVISION = Preprocess.for_input(TORCHVISION_INPUT)
# Caffe's bvlc_alexnet: 256, crop 227, 0-255 BGR minus the per-channel mean of ilsvrc_2012_mean
# (B 104.007, G 116.669, R 122.679), the form Caffe's own classification example uses.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
CAFFE_BVLC = Preprocess(resize=256, crop=227, in_chans=3, scale=1.0, mean=CAFFE_MEAN_BGR, channel_order="BGR")
