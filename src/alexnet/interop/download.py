"""Where the published AlexNet weights live, and a cached, hash-checked download of them.

Nothing here runs at import. The machines this project is developed on cannot reach these
URLs; the download path is exercised in the tests with file:// URLs (urllib serves both).
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from torch.hub import download_url_to_file

from ..errors import CheckpointError
from ..files import cache_dir, sha256_file


@dataclass(frozen=True)
class KnownWeights:
    name: str
    url: str
    format: str  # "torchvision" or "caffe-npy"
    sha256_prefix: str | None  # checked after download when known
    description: str


KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    w.name: w
    for w in (
        KnownWeights(
            "torchvision", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "torchvision",
            # torchvision names its files by the first 8 hex digits of their sha256
            "7be5be79",
            "torchvision IMAGENET1K_V1 (56.522% / 79.066% top-1/top-5 on ILSVRC-2012 val, centre crop)",
        ),
        KnownWeights(
            "bvlc_alexnet", "http://www.cs.toronto.edu/~guerzhoy/tf_alexnet/bvlc_alexnet.npy", "caffe-npy", None,
            "Caffe's bvlc_alexnet (57.1% / 80.2%) as converted by caffe-tensorflow (M. Guerzhoy's copy)",
        ),
    )
}  # fmt: skip


def is_url(source: str) -> bool:
    return urllib.parse.urlparse(source).scheme in ("http", "https", "file")


def fetch(url: str, dest_dir: str | os.PathLike[str] | None = None, sha256_prefix: str | None = None,
          progress: bool = True) -> Path:  # fmt: skip
    """Download `url` into `dest_dir` (default: cache_dir()) unless a verified copy is there.

    The file is written to a temporary name and renamed when complete, so an interrupted
    download never leaves a truncated file under the final name. A hash mismatch is a
    CheckpointError and leaves nothing behind.
    """
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    dest = Path(dest_dir) if dest_dir is not None else cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / name
    if target.is_file() and (sha256_prefix is None or sha256_file(target).startswith(sha256_prefix)):
        return target
    try:
        download_url_to_file(url, str(target), hash_prefix=sha256_prefix, progress=progress)
    except RuntimeError as exc:  # torch.hub's hash check
        raise CheckpointError(f"download of {url} failed its sha256 check: {exc}") from None
    except OSError as exc:  # URLError, HTTPError, disk errors
        raise CheckpointError(f"cannot download {url}: {getattr(exc, 'reason', None) or exc}") from None
    return target
