"""SOURCE argument -> Source: the one place that knows every reader (the top of the source layer).

`resolve_source(spec)` accepts
  a path            auto-detected: ImageNet layout (train/<wnid>/...), a cifar-10-batches-py
                    folder, a folder of idx files (Fashion-MNIST, MNIST), ImageNet's archives as
                    downloaded (ILSVRC2012_img_train.tar, ..._img_val.tar, ..._devkit_t12.tar.gz;
                    read in place), or a class-per-folder tree;
  fashion-mnist[:PATH]   Debian's /usr/share/datasets/fashion-mnist, PATH, or the upstream download;
  cifar10[:PATH]    CIFAR-10's python batches: PATH (cifar-10-python.tar.gz or the extracted
                    folder), else the official archive downloaded (md5 checked) into the cache;
  synthetic[:k=v,...]    generated images with class-dependent structure (see arrays.synthetic);
  a prepared dataset (what prepare wrote) is read again as it is stored, for a class subset or
  another size.

`classes` keeps only those classes (ids or names) in every split, renumbered in the source's order.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from . import arrays, cifar, imagenet, imagenet_archives
from .sources import Source, class_tree, hold_out, select_classes
from .store import is_dataset, store_source


def resolve_source(spec: str, *, val_fraction: float = 0.0, seed: int = 0, devkit: str | None = None,
                   synsets: str | None = None, download_dir: str | None = None, workers: int = 1,
                   progress: bool = True, classes: list[str] | None = None) -> Source:  # fmt: skip
    """Parse a SOURCE argument into a Source; a missing or empty source is a DataError.

    workers: processes for listing archives read in place (ImageNet's inner tars).
    """
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        source = arrays.synthetic(arg, spec)
    elif kind == "fashion-mnist":
        source = arrays.fashion_mnist(arg or None, download_dir=download_dir, progress=progress)
    elif kind == "cifar10":
        if arg and not Path(arg).exists():
            raise DataError(f"cifar10 source {arg} does not exist (give cifar-10-python.tar.gz or cifar-10-batches-py)")
        source = cifar.cifar10(Path(arg) if arg else None, download_dir=download_dir, progress=progress)
    else:
        path = Path(spec)
        if not path.exists():
            raise DataError(f"source {spec} does not exist")
        if not path.is_dir() and path.name in imagenet_archives.ARCHIVES:
            raise DataError(f"source {spec} is a file: give the folder that holds ImageNet's archives ({path.parent})")
        if not path.is_dir():
            raise DataError(f"source {spec} is not a folder (the CIFAR-10 archive is read as cifar10:{spec})")
        if is_dataset(path):
            source = store_source(path)
        elif arrays.find_idx(path) is not None:
            source = arrays.idx_folder(path)
        elif cifar.find_cifar(path) is not None:
            source = cifar.cifar10(path)
        elif imagenet.looks_like_imagenet(path):
            source = imagenet.imagenet(path, devkit=devkit, synsets=synsets)
        elif imagenet_archives.find_archives(path):
            source = imagenet_archives.imagenet_archives(path, devkit=devkit, synsets=synsets, workers=workers,
                                                         progress=progress)  # fmt: skip
        else:
            source = class_tree(path)
    if synsets and source.kind != "imagenet":
        source.class_names = imagenet.names_from_synsets(Path(synsets), source.class_ids)
    if classes:
        select_classes(source, classes)
    if val_fraction:
        hold_out(source, val_fraction, seed)
    for split in source.splits.values():
        if len(split) == 0:
            raise DataError(f"source {spec}: split {split.name!r} has no images")
    return source
