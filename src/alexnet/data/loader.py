"""Loader: uint8 batches from a Store, shuffled per epoch from a seed, sharded per rank, prefetched.

The order of an epoch depends only on (seed, epoch) and the rank split, so a run resumed at
(epoch, batch) sees exactly the batches it would have seen. Augmentation is the caller's
(preprocess.TrainTransform on the batch), which keeps this a fast gather from memory-mapped shards.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..errors import ConfigError
from .store import Store


class Loader:
    """Batches (images uint8 (B, C, H, W) channels-last, labels int64 (B,)) of one rank's share of a Store.

    shuffle: a new permutation each epoch from (seed, epoch); rank/world_size: this process's share
    (every rank gets the same number of batches, as DistributedDataParallel needs); drop_last:
    drop the short last batch (else pad this rank's share by wrapping around); workers: background
    threads gathering batches ahead (0: gather in the caller's thread); pin_memory: page-locked
    batches for fast host-to-GPU copies (default: when CUDA is available); subset: the store
    indices to draw from (default: all of them), e.g. `balanced_subset(store.labels, n)`.
    """

    def __init__(self, store: Store, batch_size: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, workers: int = 1, pin_memory: bool | None = None,
                 prefetch: int = 2, subset: np.ndarray | None = None) -> None:  # fmt: skip
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} must be in [0, world_size={world_size})")
        if workers < 0 or prefetch < 1:
            raise ConfigError("workers must be >= 0 and prefetch >= 1")
        self.store, self.batch_size = store, batch_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.drop_last, self.workers, self.prefetch = drop_last, workers, prefetch
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.pool = None if subset is None else np.asarray(subset, dtype=np.int64)
        if self.pool is not None and len(self.pool) and not (0 <= self.pool.min() and self.pool.max() < len(store)):
            raise ConfigError(f"subset indices must be in [0, {len(store)})")
        n = len(store) if self.pool is None else len(self.pool)
        self.per_rank = n // world_size if drop_last else -(-n // world_size)
        self.num_batches = self.per_rank // batch_size if drop_last else -(-self.per_rank // batch_size)
        if self.num_batches == 0:
            raise ConfigError(f"{n} images give no batch of {batch_size} per rank with world_size {world_size}")
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """The epoch `iter(loader)` yields (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch_batches(self.epoch)

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's sample order for `epoch`: a slice of one permutation shared by all ranks."""
        n = len(self.store) if self.pool is None else len(self.pool)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        if self.pool is not None:
            order = self.pool[order]
        total = self.per_rank * self.world_size
        if total > n:  # not drop_last: wrap around so every rank has the same count
            order = np.concatenate([order, order[: total - n]])
        mine = order[:total][self.rank :: self.world_size]
        if self.drop_last:
            mine = mine[: self.num_batches * self.batch_size]
        return mine

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of `epoch` in order, skipping the first `start` (exact mid-epoch resume)."""
        if not 0 <= start <= self.num_batches:
            raise ConfigError(f"start {start} must be in [0, {self.num_batches}]")
        idx = self.indices(epoch)
        chunks = [idx[i * self.batch_size : (i + 1) * self.batch_size] for i in range(start, self.num_batches)]
        if self.workers == 0:
            for c in chunks:
                yield self._gather(c)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="alexnet-loader") as pool:
            # numpy's gather and the pinned copy release the GIL, so threads overlap with training
            ahead: deque = deque()
            it = iter(chunks)
            for c in it:
                ahead.append(pool.submit(self._gather, c))
                if len(ahead) >= self.workers * self.prefetch:
                    break
            while ahead:
                batch = ahead.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    ahead.append(pool.submit(self._gather, nxt))
                yield batch

    def _gather(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.store
        buf = torch.empty((len(idx), s.size, s.size, s.channels), dtype=torch.uint8, pin_memory=self.pin_memory)
        s.read(idx, out=buf.numpy())
        labels = torch.from_numpy(s.labels[idx])
        if self.pin_memory:
            labels = labels.pin_memory()
        return buf.permute(0, 3, 1, 2), labels  # (B, C, H, W) view, channels-last in memory


def balanced_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` indices (sorted) with the classes as equal as `n` allows, drawn reproducibly from `seed`.

    The same (labels, n, seed) always give the same images, so experiment arms and seeds that
    train on a subset all see one fixed set.
    """
    labels = np.asarray(labels)
    if not 1 <= n <= len(labels):
        raise ConfigError(f"a subset of {n} images must be between 1 and the {len(labels)} available")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    quota = {c: n // len(classes) for c in pools}
    for c in rng.permutation(list(pools))[: n % len(classes)]:  # the remainder, one each to random classes
        quota[int(c)] += 1
    short = sum(max(0, quota[c] - len(p)) for c, p in pools.items())  # a class too small gives its share away
    picked = [p[: quota[c]] for c, p in pools.items()]
    if short:
        rest = np.concatenate([p[quota[c] :] for c, p in pools.items()])
        picked.append(rng.permutation(rest)[:short])
    return np.sort(np.concatenate(picked))
