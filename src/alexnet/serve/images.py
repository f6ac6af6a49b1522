"""Images in and out of the explorer: uploads checked before they are decoded, PNG encoding, the
model's view mapped back to pixels, and layer activations tiled into palette images.

An upload is refused before any pixel is decoded when it is over the byte cap, when its header
claims more pixels than the pixel cap (a decompression bomb) or an image smaller than `prepare`
keeps (short side under data.decode.MIN_SIDE). Everything else goes through the checkpoint's own
reader (`Predictor.read_image`, the decoder `prepare` uses), so CMYK, 16-bit, palette and alpha
images are converted exactly as prepare converts them, and the file kinds prepare skips
(empty, truncated, not an image) come back as UploadError with prepare's reason.
"""

from __future__ import annotations

import base64
import io
import math
import warnings

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.decode import MIN_SIDE, BadImage
from ..errors import AlexNetError
from ..inference import Predictor
from ..preprocess import Preprocess

MAX_UPLOAD_BYTES = 16 << 20  # a 16 MB photo is already far larger than any model here needs
MAX_UPLOAD_PIXELS = 40_000_000  # ~8000 x 5000; Pillow's own bomb limit (89 Mpixel) would let 270 MB through


class UploadError(AlexNetError):
    """An upload the explorer refuses; `status` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header without decoding pixels; None when Pillow cannot
    identify the file (the decoder then says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Image.DecompressionBombError as exc:
        raise UploadError(f"decompression bomb refused ({exc})", 413) from None
    except Exception:  # unidentified, truncated header, ...: read_image reports it in prepare's words
        return None


def read_upload(predictor: Predictor, data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES,
                max_pixels: int = MAX_UPLOAD_PIXELS) -> Tensor:  # fmt: skip
    """Uploaded file bytes -> uint8 (C, S, S) as the store would hold it, or UploadError."""
    if len(data) > max_bytes:
        raise UploadError(f"upload of {len(data):,} bytes is over the limit of {max_bytes:,} bytes", 413)
    if not data:
        raise UploadError("empty file: no image was sent")
    size = header_size(data)
    if size is not None:
        w, h = size
        if w * h > max_pixels:
            raise UploadError(f"decompression bomb refused ({w}x{h} = {w * h:,} pixels > {max_pixels:,})", 413)
        if min(w, h) < MIN_SIDE:
            raise UploadError(f"image too small ({w}x{h}; prepare keeps images whose short side is >= {MIN_SIDE})")
    try:
        return predictor.read_image(data, min_side=MIN_SIDE, max_pixels=max_pixels)  # the decoder checks again
    except BadImage as exc:
        raise UploadError(f"not a usable image: {exc}") from None
    except (OSError, ValueError, MemoryError) as exc:  # anything else the decoder trips on is still the file's fault
        raise UploadError(f"not a usable image: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------- encoding


def png(arr: np.ndarray, palette: bytes | None = None) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG bytes. zlib level 1: on these maps it is ~4x faster than
    the default level 6 for files ~15% larger, and the bytes only travel over loopback."""
    img = Image.fromarray(np.ascontiguousarray(arr))
    if palette is not None:
        img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def data_url(png_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def _palette() -> bytes:
    """viridis at 255 levels (index 255: the white gap between maps): dark = 0, yellow = the maximum."""
    anchors = np.array([[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
                        [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]], np.float64)  # fmt: skip
    t = np.linspace(0, len(anchors) - 1, 255)
    rgb = np.stack([np.interp(t, np.arange(len(anchors)), anchors[:, c]) for c in range(3)], 1)
    rgb = np.vstack([rgb, [[255, 255, 255]]])
    return np.rint(rgb).astype(np.uint8).tobytes()


PALETTE = _palette()
GAP = 255  # palette index of the gap between maps


def to_levels(maps: Tensor, scale: str = "map") -> np.ndarray:
    """(K, ...) float activations -> uint8 levels 0..254: each map divided by its own largest
    absolute value ("map": the structure of every map shows), or all by the layer's ("layer":
    the maps' strengths compare). ReLU maps are >= 0; signed ones (fc8 logits) go from their
    minimum to their maximum."""
    x = maps.detach().float().reshape(maps.shape[0], -1)
    dims = 1 if scale == "map" else None
    lo = x.amin(dim=dims, keepdim=True) if dims else x.amin()
    lo = torch.clamp(lo, max=0.0)  # ReLU maps keep 0 at the dark end
    hi = x.amax(dim=dims, keepdim=True) if dims else x.amax()
    span = torch.clamp(hi - lo, min=1e-12)
    levels = ((x - lo) * (254.0 / span)).round_().clamp_(0, 254).to(torch.uint8)
    return levels.reshape(maps.shape).numpy()


def tile(levels: np.ndarray, cols: int | None = None, gap: int = 1) -> np.ndarray:
    """(K, h, w) uint8 maps -> one (H, W) mosaic, row-major, `gap` pixels of GAP between maps."""
    k, h, w = levels.shape
    cols = cols or int(math.ceil(math.sqrt(k)))
    rows = int(math.ceil(k / cols))
    full = np.full((rows * cols, h + gap, w + gap), GAP, np.uint8)
    full[:k, :h, :w] = levels
    out = full.reshape(rows, cols, h + gap, w + gap).transpose(0, 2, 1, 3).reshape(rows * (h + gap), cols * (w + gap))
    return out[: rows * (h + gap) - gap, : cols * (w + gap) - gap]


def strip(levels: np.ndarray, width: int = 128) -> np.ndarray:
    """(N,) uint8 levels of an fc layer -> (rows, width) image, read row by row; the tail is GAP."""
    n = levels.shape[0]
    width = min(width, n)
    rows = int(math.ceil(n / width))
    out = np.full(rows * width, GAP, np.uint8)
    out[:n] = levels
    return out.reshape(rows, width)


# ---------------------------------------------------------------- what the network sees


def view_pixels(view: Tensor, pp: Preprocess) -> np.ndarray:
    """One model input (C, H, W) from `Predictor.views` -> (H, W[, 3]) uint8 RGB pixels: `normalize`
    undone step by step (std, then the mean image or the channel means, then the scale, then
    the channel order). For an unaugmented view this gives back the crop's own pixels."""
    x = view.detach().float().cpu().clone()
    c, h, w = x.shape
    if pp.std is not None:
        x.mul_(torch.tensor(pp.std, dtype=torch.float32)[:, None, None])
    if pp.mean_image is not None:
        s = pp.mean_image.shape[-1]
        top, left = (s - h) // 2, (s - w) // 2  # augment.center_crop's rounding
        x.div_(pp.scale).add_(pp.mean_image.float()[:, top : top + h, left : left + w])
    else:
        x.add_(torch.tensor(pp.mean, dtype=torch.float32)[:, None, None]).div_(pp.scale)
    if pp.channel_order == "BGR":
        x = x.flip(0)
    pixels = x.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return pixels[..., 0] if c == 1 else pixels


def view_contrast(view: Tensor, pp: Preprocess) -> np.ndarray:
    """The same input as the network's numbers: after mean subtraction, stretched jointly over
    all channels to 0-255 (mid-grey = 0), channels in RGB order."""
    x = view.detach().float().cpu()
    if pp.channel_order == "BGR":
        x = x.flip(0)
    m = float(x.abs().max()) or 1.0
    pixels = ((x / m) * 127.5 + 127.5).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return pixels[..., 0] if x.shape[0] == 1 else pixels


def hwc(image: np.ndarray | Tensor) -> np.ndarray:
    """A store row (S, S, C) -> (S, S[, 3]) for PNG (grey images lose their channel axis)."""
    a = np.asarray(image)
    return a[..., 0] if a.shape[-1] == 1 else a


def chw(image: Tensor) -> np.ndarray:
    """A decoded image (C, S, S), as Predictor.read_image gives it -> (S, S[, 3]) for PNG."""
    return hwc(image.permute(1, 2, 0).numpy())
