"""The 1000 ILSVRC-2012 classes: WordNet ids and names, in the order every public model uses.

The order is the sorted wnids (n01440764 tench ... n15075141 toilet tissue), which is the
class index of torchvision's AlexNet, Caffe's bvlc_alexnet and a `train/<wnid>/` folder tree
read in sorted order. The list ships as package data (resources/imagenet_classes.txt, the
`LOC_synset_mapping.txt` format: "wnid name, synonym, ...").
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

NUM_IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[tuple[str, str], ...]:
    """(wnid, full comma-separated names) for the 1000 classes, in class-index order."""
    text = resources.files("alexnet").joinpath("resources/imagenet_classes.txt").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if line.strip():
            wnid, _, names = line.partition(" ")
            rows.append((wnid, names.strip()))
    assert len(rows) == NUM_IMAGENET_CLASSES, f"imagenet_classes.txt has {len(rows)} rows"
    return tuple(rows)


def imagenet_wnids() -> list[str]:
    """The 1000 WordNet ids in class-index order."""
    return [wnid for wnid, _ in imagenet_synsets()]


def imagenet_class_names() -> list[str]:
    """One short, unique name per class: the first synonym ("tench", "goldfish", ...).

    Two first synonyms occur twice in ImageNet ("crane": the bird n02012849 and the machine
    n03126707; "maillot": n03710637 and n03710721); those get their wnid appended, so names
    can key a confusion matrix or a folder.
    """
    first = [names.split(",")[0].strip() for _, names in imagenet_synsets()]
    counts: dict[str, int] = {}
    for name in first:
        counts[name] = counts.get(name, 0) + 1
    return [n if counts[n] == 1 else f"{n} ({wnid})" for n, wnid in zip(first, imagenet_wnids())]


def class_names_for(num_classes: int) -> list[str] | None:
    """ImageNet names for a 1000-way classifier; None for any other size (names unknown)."""
    return imagenet_class_names() if num_classes == NUM_IMAGENET_CLASSES else None
