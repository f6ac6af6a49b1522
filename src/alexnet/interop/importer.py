"""`import_weights(source, out)`: published AlexNet weights -> an alexnet checkpoint.

SOURCE is a local file, a URL, or a known name (`torchvision`, `bvlc_alexnet`; see
download.KNOWN_WEIGHTS), which is downloaded once into the cache and hash-checked where the
hash is published. The format is detected from the file's first bytes (.npy magic: Caffe's
bvlc_alexnet.npy; zip or pickle: a torch.save state_dict) unless given.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint import save_checkpoint
from ..errors import CheckpointError, ConfigError
from ..files import sha256_file
from ..models import empty_model
from ..preprocess import CAFFE_BVLC, TORCHVISION, Preprocess
from .caffe import BVLC_MODEL_OPTIONS, load_bvlc_npy
from .classes import class_names_for
from .download import KNOWN_WEIGHTS, fetch, is_url
from .torchvision import owt_from_state_dict, read_torch_weights

FORMATS = ("torchvision", "caffe-npy")


@dataclass(frozen=True)
class ImportResult:
    out: str
    format: str
    arch: str
    num_classes: int
    source: str
    sha256: str
    class_names: bool  # ImageNet names recorded

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_format(path: str | os.PathLike[str]) -> str:
    """"caffe-npy" for a .npy file, "torchvision" for a torch.save file (zip or legacy pickle)."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x93NUMPY"):
        return "caffe-npy"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torchvision"
    raise CheckpointError(f"{path}: unknown weights format (not a .npy or a torch.save file); pass --format")


def locate_weights(source: str, cache: str | os.PathLike[str] | None = None) -> tuple[Path, str | None]:
    """(local path, format if known) for a known name, a URL or a path; downloads when needed."""
    if source in KNOWN_WEIGHTS:
        known = KNOWN_WEIGHTS[source]
        return fetch(known.url, cache, known.sha256_prefix), known.format
    if is_url(source):
        return fetch(source, cache), None
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"no such file: {source} (known names: {', '.join(KNOWN_WEIGHTS)})")
    return path, None


def convert(path: str | os.PathLike[str], fmt: str) -> tuple[nn.Module, Preprocess]:
    """Weights file -> (model with the weights, the preprocessing they were trained with)."""
    if fmt == "torchvision":
        return owt_from_state_dict(read_torch_weights(path)), TORCHVISION
    if fmt == "caffe-npy":
        sd = load_bvlc_npy(path)
        model = empty_model("alexnet", num_classes=int(sd["classifier.fc8.bias"].shape[0]), **BVLC_MODEL_OPTIONS)
        model.load_state_dict(sd, strict=True)
        return model, CAFFE_BVLC
    raise ConfigError(f"unknown weights format {fmt!r}; choose one of {FORMATS}")


def import_weights(source: str, out: str | os.PathLike[str], *, format: str | None = None,
                   cache: str | os.PathLike[str] | None = None) -> ImportResult:  # fmt: skip
    """Convert published weights to an alexnet checkpoint at `out` (model, preprocessing, class names)."""
    if format is not None and format not in FORMATS:
        raise ConfigError(f"unknown weights format {format!r}; choose one of {FORMATS}")
    path, known_fmt = locate_weights(source, cache)
    fmt = format or known_fmt or detect_format(path)
    model, preprocess = convert(path, fmt)
    digest = sha256_file(path)
    names = class_names_for(model.num_classes)
    origin = {"format": fmt, "source": source, "file": str(path), "sha256": digest}
    save_checkpoint(out, model, class_names=names, preprocess=preprocess, meta={"imported_from": origin})
    return ImportResult(str(out), fmt, model.arch, model.num_classes, source, digest, names is not None)
