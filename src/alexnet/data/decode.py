"""Decode one image file into a square uint8 array: short side to `size`, central crop (PAPER.md section 2).

JPEGs go through simplejpeg (libjpeg-turbo) with DCT-domain downscaling: the decoder itself
returns the image at 1/2, 1/4 or 1/8 scale when that still leaves the short side >= size,
which is what makes `prepare` fast (see `alexnet bench loader` for the measured speed-up over
a plain Pillow decode). Everything else, and any JPEG simplejpeg refuses, goes through Pillow
(with `draft`, its own DCT scaling, for JPEGs). Files that cannot be turned into an image raise
BadImage with a short reason; the caller skips and reports them.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image

try:
    import simplejpeg
except ImportError:  # optional (extra "fast"): Pillow's draft mode is the fallback
    simplejpeg = None

# Pillow's own bomb threshold (about 89 Mpixel). Larger images are refused before decoding.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
MIN_SIDE = 8  # below this an image carries no content worth a 256 px training sample


class BadImage(Exception):
    """A file that cannot be decoded into an image; str() is the reason written to the report."""


def decode_image(data: bytes, size: int, channels: int = 3, *, min_side: int = MIN_SIDE,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:  # fmt: skip
    """The image in `data`, rescaled so its short side is `size`, center-cropped: (size, size, channels) uint8."""
    if not data:
        raise BadImage("empty file")
    if data[:2] == b"\xff\xd8" and simplejpeg is not None:
        try:
            return _decode_jpeg_fast(data, size, channels, min_side, max_pixels)
        except BadImage:
            raise
        except Exception:
            pass  # CMYK/YCCK, progressive oddities, slightly broken files: Pillow decides below
    return _decode_pillow(data, size, channels, min_side, max_pixels)


def _check_dims(w: int, h: int, min_side: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise BadImage(f"decompression bomb ({w}x{h} = {w * h} pixels > {max_pixels})")
    if min(w, h) < min_side:
        raise BadImage(f"too small ({w}x{h}, short side < {min_side})")


def _decode_jpeg_fast(data: bytes, size: int, channels: int, min_side: int, max_pixels: int) -> np.ndarray:
    h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    _check_dims(w, h, min_side, max_pixels)
    if colorspace not in ("YCbCr", "Gray", "RGB"):
        raise ValueError(colorspace)  # CMYK/YCCK: Pillow inverts Adobe CMYK correctly
    arr = simplejpeg.decode_jpeg(
        data, colorspace="RGB" if channels == 3 else "GRAY", min_height=size, min_width=size
    )
    arr = apply_orientation(arr, exif_orientation(data))
    return resize_center_crop(arr, size)


def _open_pillow(data: bytes, min_side: int, max_pixels: int, draft: int | None = None) -> Image.Image:
    """The decoded Pillow image (a JPEG drafted to at least `draft` px when given); every failure a BadImage.
    Truncated files are errors here (ImageFile.LOAD_TRUNCATED_IMAGES stays False), not grey-filled images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            _check_dims(w, h, min_side, max_pixels)
            if draft is not None and img.format == "JPEG":
                img.draft("RGB" if img.mode != "L" else "L", (draft, draft))
            img.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise BadImage(f"truncated or corrupt {_fmt(data)}: {exc}") from None
    return img


def _decode_pillow(data: bytes, size: int, channels: int, min_side: int, max_pixels: int) -> np.ndarray:
    img = _open_pillow(data, min_side, max_pixels, draft=size)
    orientation = _pil_orientation(img)
    arr = _to_uint8(img, channels)
    arr = apply_orientation(arr, orientation)
    return resize_center_crop(arr, size)


def decode_like_torchvision(data: bytes, resize: int, crop: int, *, min_side: int = MIN_SIDE,
                            max_pixels: int = MAX_PIXELS) -> np.ndarray:  # fmt: skip
    """The (resize, resize, 3) uint8 square whose central `crop` is exactly what torchvision's eval
    transform feeds a model: Pillow decodes the whole file (no draft scaling, no EXIF rotation)
    and converts it to RGB (its image loader), Resize(resize) scales the short side to `resize`
    and the long one to int(resize * long / short) with Pillow's bilinear filter (antialiased),
    CenterCrop(crop) starts at int(round((side - crop) / 2)). `resize - crop` must be even."""
    if not data:
        raise BadImage("empty file")
    img = _open_pillow(data, min_side, max_pixels)
    w, h = img.size
    with warnings.catch_warnings():  # P with transparency: Pillow's warning, torchvision's result
        warnings.simplefilter("ignore")
        img = img.convert("RGB")
    short, long = min(w, h), max(w, h)
    if short != resize:
        new_long = int(resize * long / short)
        img = img.resize((resize, new_long) if w <= h else (new_long, resize), Image.Resampling.BILINEAR)
    arr = np.asarray(img)
    margin = (resize - crop) // 2
    top, left = (int(round((side - crop) / 2.0)) - margin for side in arr.shape[:2])
    return np.ascontiguousarray(arr[top : top + resize, left : left + resize])


def _fmt(data: bytes) -> str:
    return "JPEG" if data[:2] == b"\xff\xd8" else "PNG" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image"


def _pil_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not lose an otherwise good image
        return 1


def _to_uint8(img: Image.Image, channels: int) -> np.ndarray:
    """Any Pillow mode -> (H, W, channels) uint8: 16-bit scaled down, palette expanded, alpha dropped."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img).astype(np.float64)
        if mode != "F" and a.max(initial=0) > 255:
            a = a / 257.0  # 16-bit range -> 8-bit
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        img = Image.fromarray(gray, "L")
        mode = "L"
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow warns on P+transparency -> RGB; go through RGBA explicitly
    # Alpha is dropped like torchvision's/timm's loaders do, so images match what pretrained
    # AlexNet weights were trained on.
    target = "RGB" if channels == 3 else "L"
    if img.mode != target:
        img = img.convert(target)
    arr = np.asarray(img)
    return arr if arr.ndim == 3 else arr[:, :, None]


def resize_center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C): short side to size (antialiased bilinear), central square."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    short = min(h, w)
    top, left = (h - short) // 2, (w - short) // 2
    if short == size:
        return np.ascontiguousarray(arr[top : top + size, left : left + size])
    # Resizing only the central square (Pillow's box=) is the same as resize-then-crop, cheaper.
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr)
    out = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + short, top + short))
    out_arr = np.asarray(out)
    return out_arr[:, :, None] if out_arr.ndim == 2 else out_arr


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Undo EXIF orientation 1-8 on an (H, W, C) array (what ImageOps.exif_transpose does)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag of a JPEG (1 when absent or unreadable), read without decoding."""
    pos, n = 2, len(data)
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no metadata after this
            break
        seg_len = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            return _tiff_orientation(data[pos + 10 : pos + 2 + seg_len])
        pos += 2 + seg_len
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    try:
        endian = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (ifd,) = struct.unpack(endian + "I", tiff[4:8])
        (count,) = struct.unpack(endian + "H", tiff[ifd : ifd + 2])
        for i in range(count):
            entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
            tag, _typ, _cnt, value = struct.unpack(endian + "HHIH", entry[:10])
            if tag == 0x0112:
                return value if 1 <= value <= 8 else 1
    except (KeyError, struct.error, IndexError):
        pass
    return 1
