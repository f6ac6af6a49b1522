"""Training augmentation as a list of ops, and the batch functions it and the evaluation views
are made of (PAPER.md section 4). Batches are (B, C, H, W), CPU or CUDA, uint8 (the store's
pixels) or float; crops keep the dtype, the arithmetic ones return float.

An op (`Op`) is one augmentation: it names the DataConfig fields it reads (`keys`; building it
sees no others) and checks their values. `TRAIN_OPS` is the pipeline, in the order the ops act;
`train_ops` builds the ones a config turns on. The ops only decide (a window, a mirror, a colour
offset) on a `Batch`; each crop, its mirror and its patch of the mean image are cut in one copy
at the end (`Batch.cut`), and preprocess.TrainTransform normalises them.

Random draws, the one place they are described (preprocess.py and train/loop.py point here):
every op draws only from a torch.Generator of its own, on the batch's device, seeded by
`op_seed(run seed, step, op name)`. So step s's batch depends on (seed, s) alone, which exact
resume relies on, and adding, removing or reordering an op leaves every other op's draws as
they were. Within an op the draws are, in order:

    crop      B row offsets, then B column offsets, uniform over the window's positions
    flip      B fair coins (mirror where the coin is below 1/2)
    lighting  B x C normal alphas, std data.lighting
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import DataConfig
from ..errors import ConfigError

PAD_MODES = ("reflect", "zeros")


def crop_offsets(batch: int, height: int, width: int, crop: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniform top/left offsets in [0, H - crop] / [0, W - crop], drawn on the generator's device."""
    if crop > height or crop > width:
        raise ConfigError(f"crop {crop} is larger than the image ({height}x{width})")
    dev = generator.device
    top = torch.randint(0, height - crop + 1, (batch,), generator=generator, device=dev)
    left = torch.randint(0, width - crop + 1, (batch,), generator=generator, device=dev)
    return top, left


def flip_coins(batch: int, generator: torch.Generator) -> Tensor:
    """(B,) bool, each True with probability 1/2, drawn on the generator's device."""
    return torch.rand(batch, generator=generator, device=generator.device) < 0.5


def apply_crops(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flips: torch.Tensor, crop: int) -> torch.Tensor:
    """Crop each image b at (top[b], left[b]) and mirror it where flips[b]: (B, C, crop, crop), x's dtype."""
    b, c, _, _ = x.shape
    if x.device.type == "cpu":
        # A slice per image is a plain copy of its rows; measured 4x faster on CPU than one
        # advanced-indexing gather over every pixel. Channels-last input (the store's layout)
        # stays channels-last, so each row of a crop is one contiguous run of bytes.
        hwc = x.permute(0, 2, 3, 1)
        params = zip(top.tolist(), left.tolist(), flips.tolist())
        if hwc[0].is_contiguous():
            out = torch.empty((b, crop, crop, c), dtype=x.dtype)
            for k, (t, l, f) in enumerate(params):
                view = hwc[k, t : t + crop, l : l + crop]
                out[k] = view.flip(1) if f else view
            return out.permute(0, 3, 1, 2)
        out = torch.empty((b, c, crop, crop), dtype=x.dtype)
        for k, (t, l, f) in enumerate(params):
            view = x[k, :, t : t + crop, l : l + crop]
            out[k] = view.flip(-1) if f else view
        return out
    top, left, flips = top.to(x.device), left.to(x.device), flips.to(x.device)
    ar = torch.arange(crop, device=x.device)
    rows = top[:, None] + ar  # (B, crop)
    cols = torch.where(flips[:, None], left[:, None] + crop - 1 - ar, left[:, None] + ar)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # channels-last


def per_channel_(x: torch.Tensor, values: torch.Tensor, op: str) -> torch.Tensor:
    """In place x (B, C, H, W) float `op` ("add" or "mul") values (B, C) or (C,), fast in either memory format.

    A (B, C, 1, 1) broadcast over a channels-last tensor runs an inner loop of length C (3) and
    was measured 3x slower on CPU than viewing each row as W*C values against a tiled pattern.
    """
    b, c, h, w = x.shape
    values = values.to(device=x.device, dtype=x.dtype).expand(b, c)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        target, pattern = x.permute(0, 2, 3, 1).view(b, h, w * c), values.repeat(1, w)[:, None, :]
    else:
        target, pattern = x, values[:, :, None, None]
    target.add_(pattern) if op == "add" else target.mul_(pattern)
    return x


def to_float_plus(x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """float32 copy of x (memory format kept) plus a per-image, per-channel offset (B, C)."""
    out = torch.empty_like(x, dtype=torch.float32)
    out.copy_(x)  # a plain cast copy vectorizes; a fused uint8 + float add did not (measured 5x slower)
    return out if offset is None else per_channel_(out, offset, "add")


def pad_images(x: torch.Tensor, pad: int, mode: str = "reflect") -> torch.Tensor:
    if mode not in PAD_MODES:
        raise ConfigError(f"pad_mode must be one of {PAD_MODES}, got {mode!r}")
    return F.pad(x, (pad,) * 4, mode="reflect" if mode == "reflect" else "constant")


def lighting_offsets(batch: int, eigvals: torch.Tensor, eigvecs: torch.Tensor, std: float,
                     generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """(B, C) RGB offsets eigvecs @ (alpha * sqrt(eigvals)), alpha ~ N(0, std) per image and component.

    `eigvals` are the store's pixel-covariance eigenvalues (variances); their square roots, the
    standard deviations along the principal axes, keep the offset in pixel units whatever the
    scale (this is what the widely used ImageNet "eigenvalues" [0.2175, 0.0188, 0.0045] on 0-1
    pixels are used as). With std=0.1 a typical offset is a few percent of the pixel range.
    """
    c = eigvals.numel()
    alpha = torch.randn(batch, c, generator=generator, device=generator.device) * std
    alpha = alpha.to(eigvals.device)
    return (alpha * eigvals.clamp(min=0).sqrt()) @ eigvecs.T  # row b: sum_i alpha_bi sqrt(l_i) p_i


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """The central crop x crop patch of each image (top/left rounded down), a view."""
    h, w = x.shape[-2:]
    if crop > h or crop > w:
        raise ConfigError(f"crop {crop} is larger than the image ({h}x{w})")
    t, l = (h - crop) // 2, (w - crop) // 2
    return x[..., t : t + crop, l : l + crop]


def ten_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """(B, 10, C, crop, crop): top-left, top-right, bottom-left, bottom-right, center, then the same mirrored."""
    h, w = x.shape[-2:]
    if crop > h or crop > w:
        raise ConfigError(f"crop {crop} is larger than the image ({h}x{w})")
    five = [x[..., :crop, :crop], x[..., :crop, w - crop :], x[..., h - crop :, :crop],
            x[..., h - crop :, w - crop :], center_crop(x, crop)]  # fmt: skip
    crops = torch.stack(five, dim=1)
    return torch.cat([crops, crops.flip(-1)], dim=1)


# ---------------------------------------------------------------- the training pipeline
def op_seed(seed: int, step: int, name: str) -> int:
    """The seed of op `name`'s generator at `step` of a run seeded `seed`: 64 bits of a blake2b
    hash of the three (not Python's hash(), which changes from one process to the next)."""
    digest = hashlib.blake2b(f"{seed}/{step}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True, eq=False)
class Batch:
    """A training batch between ops: the store pixels and what the ops have decided for them.

    Nothing is cut until every op has run, so a crop, its mirror and its patch of the mean
    image cost one copy each (`cut`). An op returns a changed copy (`dataclasses.replace`).
    """

    images: Tensor  # (B, C, H, W) store pixels (uint8, channels-last), padded by the crop op
    mean_image: Tensor | None  # (C, H, W) the mean image, padded alike; None: none is subtracted
    crop: int  # side of the crops to cut
    top: Tensor | None = None  # (B,) each crop's row offset in `images` (None: 0)
    left: Tensor | None = None  # (B,) and its column offset (None: 0)
    flips: Tensor | None = None  # (B,) bool: mirror the crop (None: none is mirrored)
    offset: Tensor | None = None  # (B, C) pixel units, added to every pixel before normalisation

    @classmethod
    def whole(cls, images: Tensor, mean_image: Tensor | None = None) -> Batch:
        """Nothing decided yet: every image whole and unmirrored."""
        return cls(images, mean_image, min(images.shape[-2:]))

    def cut(self) -> tuple[Tensor, Tensor | None]:
        """The crops (B, C, crop, crop) in the images' dtype, and the mean image under each (or None)."""
        b, dev = self.images.shape[0], self.images.device
        decided = ((self.top, torch.int64), (self.left, torch.int64), (self.flips, torch.bool))
        top, left, flips = (torch.zeros(b, dtype=dtype, device=dev) if v is None else v for v, dtype in decided)
        crops = apply_crops(self.images, top, left, flips, self.crop)
        if self.mean_image is None:
            return crops, None
        return crops, apply_crops(self.mean_image.expand(b, -1, -1, -1), top, left, flips, self.crop)


class Op:
    """One training augmentation.

    A subclass sets `name` (its generator's seed depends on it: renaming an op changes its
    draws) and `keys` (the DataConfig fields it reads, checked here to exist), builds itself in
    `from_config` from those keys alone, and in `__call__` returns the batch with its decision
    made, drawing only from the generator it is given.
    """

    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = set(cls.keys) - {f.name for f in fields(DataConfig)}
        assert not unknown, f"{cls.__name__} reads keys DataConfig does not have: {sorted(unknown)}"

    @classmethod
    def from_config(cls, cfg: SimpleNamespace, store: Any) -> Op | None:
        """The op for these settings (`cfg` holds only `keys`) on `store`, or None when they turn it off."""
        raise NotImplementedError

    def to(self, device: torch.device) -> Op:
        """The op with its tensors on `device` (built once per device, not per batch)."""
        return self

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class RandomCrop(Op):
    """Pad every side by `pad` (reflect, or zeros), then a crop x crop window at a uniformly drawn
    place (section 4.1: random 224 patches of the 256 images; small images: pad 4, crop 32)."""

    name = "crop"
    keys = ("crop", "pad", "pad_mode")
    crop: int
    pad: int = 0
    pad_mode: str = "reflect"
    _padded: dict = field(default_factory=dict, init=False, repr=False)  # mean image -> padded, per device

    def __post_init__(self) -> None:
        if self.crop < 1 or self.pad < 0:
            raise ConfigError(f"data.crop must be >= 1 and data.pad >= 0, got crop {self.crop}, pad {self.pad}")
        if self.pad_mode not in PAD_MODES:
            raise ConfigError(f"data.pad_mode must be one of {', '.join(PAD_MODES)}; got {self.pad_mode!r}")

    @classmethod
    def from_config(cls, cfg: SimpleNamespace, store: Any) -> RandomCrop:
        op = cls(cfg.crop, cfg.pad, cfg.pad_mode)
        if op.crop > store.size + 2 * op.pad:
            raise ConfigError(f"data.crop {op.crop} is larger than the store size {store.size} + 2 * data.pad {op.pad}")
        return op

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        images, mean = batch.images, batch.mean_image
        if self.pad:
            images = pad_images(images, self.pad, self.pad_mode)
            mean = None if mean is None else self._pad_mean(mean)
        top, left = crop_offsets(images.shape[0], images.shape[2], images.shape[3], self.crop, generator)
        return replace(batch, images=images, mean_image=mean, crop=self.crop, top=top, left=left)

    def _pad_mean(self, mean: Tensor) -> Tensor:
        key = str(mean.device)
        if key not in self._padded or self._padded[key][0] is not mean:
            self._padded[key] = (mean, pad_images(mean[None], self.pad, self.pad_mode)[0])
        return self._padded[key][1]


@dataclass(frozen=True, eq=False)
class Flip(Op):
    """Mirror each crop left-right with probability 1/2 (section 4.1's horizontal reflections)."""

    name = "flip"
    keys = ("flip",)

    @classmethod
    def from_config(cls, cfg: SimpleNamespace, store: Any) -> Flip | None:
        return cls() if cfg.flip else None

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        return replace(batch, flips=flip_coins(batch.images.shape[0], generator))


@dataclass(frozen=True, eq=False)
class Lighting(Op):
    """PCA lighting (section 4.1): one RGB offset per image along the store's principal colour axes
    (`lighting_offsets`); an RGB augmentation, off for other channel counts."""

    name = "lighting"
    keys = ("lighting",)
    std: float  # of the alphas (the paper's 0.1)
    eigvals: Tensor  # (C,) variances of the training pixels along their principal axes (0-255 units)
    eigvecs: Tensor  # (C, C), the axes as columns

    def __post_init__(self) -> None:
        if self.std < 0:
            raise ConfigError(f"data.lighting (the std of the PCA lighting alphas) must be >= 0, got {self.std}")

    @classmethod
    def from_config(cls, cfg: SimpleNamespace, store: Any) -> Lighting | None:
        op = cls(cfg.lighting, torch.as_tensor(store.stats.eigvals, dtype=torch.float32),
                 torch.as_tensor(store.stats.eigvecs, dtype=torch.float32))  # fmt: skip
        return op if op.std > 0 and store.channels == 3 else None

    def to(self, device: torch.device) -> Lighting:
        return replace(self, eigvals=self.eigvals.to(device), eigvecs=self.eigvecs.to(device))

    def __call__(self, batch: Batch, generator: torch.Generator) -> Batch:
        offset = lighting_offsets(batch.images.shape[0], self.eigvals, self.eigvecs, self.std, generator)
        return replace(batch, offset=offset if batch.offset is None else batch.offset + offset)


TRAIN_OPS: tuple[type[Op], ...] = (RandomCrop, Flip, Lighting)  # the pipeline, in the order the ops act


def train_ops(cfg: DataConfig, store: Any) -> tuple[Op, ...]:
    """The ops of TRAIN_OPS that `cfg` turns on, built for `store` (its size, channels, statistics)."""
    ops = (cls.from_config(SimpleNamespace(**{k: getattr(cfg, k) for k in cls.keys}), store) for cls in TRAIN_OPS)
    return tuple(op for op in ops if op is not None)


def run_ops(ops: tuple[Op, ...], batch: Batch, seed: int, step: int) -> Batch:
    """The batch after every op, each drawing from its own generator seeded by op_seed(seed, step, name)."""
    assert len({op.name for op in ops}) == len(ops), f"two ops share a generator name: {[op.name for op in ops]}"
    generator = torch.Generator(device=batch.images.device)
    for op in ops:
        batch = op(batch, generator.manual_seed(op_seed(seed, step, op.name)))
    return batch
