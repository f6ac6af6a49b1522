"""Augmentation and evaluation views as pure functions on batches (B, C, H, W), CPU or CUDA (PAPER.md section 4).

preprocess.py composes them into the training transform and the evaluation views.

Random draws come only from the torch.Generator passed in (drawn on the generator's device, in
the order: row offsets, column offsets, flips, lighting), so a batch's augmentation is
reproducible from the generator's state. Inputs may be uint8 (the store's pixels) or float;
crops keep the dtype, the arithmetic ones return float.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError

PAD_MODES = ("reflect", "zeros")


def crop_params(batch: int, height: int, width: int, crop: int, generator: torch.Generator,
                flip: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Uniform top/left offsets in [0, H - crop] / [0, W - crop] and a fair coin per image for the flip."""
    if crop > height or crop > width:
        raise ConfigError(f"crop {crop} is larger than the image ({height}x{width})")
    dev = generator.device
    top = torch.randint(0, height - crop + 1, (batch,), generator=generator, device=dev)
    left = torch.randint(0, width - crop + 1, (batch,), generator=generator, device=dev)
    flips = torch.rand(batch, generator=generator, device=dev) < 0.5 if flip else torch.zeros(batch, dtype=torch.bool, device=dev)
    return top, left, flips


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
