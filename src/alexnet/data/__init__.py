"""Data: sources -> prepare (decode once) -> packed store -> loader (uint8 batches) -> augment (batch tensor ops).

    from alexnet.data import open_dataset, open_store
    from alexnet.data.prepare import prepare, PrepareOptions   # what `alexnet prepare` runs
    stores = open_dataset("data/fashion-mnist")        # {"train": Store, "test": Store}
"""

from .sources import Source, resolve_source
from .stats import Stats
from .store import Store, open_dataset, open_store

__all__ = ["Source", "Stats", "Store", "open_dataset", "open_store", "resolve_source"]
