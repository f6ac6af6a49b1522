"""Data: sources -> prepare (decode once) -> packed store -> loader (uint8 batches) -> augment (batch tensor ops).

Imports point one way: sources.py (Source, Split, the Items protocol, file listing) <- the
readers (arrays.py, cifar.py, imagenet.py, imagenet_archives.py; tars.py reads tar members in
place, download.py fetches) <- resolve.py <- prepare.py (with sizing.py, decode.py, stats.py,
store.py).

    from alexnet.data import open_dataset, open_store
    from alexnet.data.prepare import prepare, PrepareOptions   # what `alexnet prepare` runs
    stores = open_dataset("data/fashion-mnist")        # {"train": Store, "test": Store}
"""

from .resolve import resolve_source
from .sources import Source
from .stats import Stats
from .store import Store, open_dataset, open_store

__all__ = ["Source", "Stats", "Store", "open_dataset", "open_store", "resolve_source"]
