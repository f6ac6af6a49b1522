"""Loader: determinism from (seed, epoch), exact resume, sharding across ranks, prefetching threads."""

import numpy as np
import pytest
import torch

from alexnet.data import open_store
from alexnet.data.loader import Loader
from alexnet.data.prepare import PrepareOptions, prepare
from alexnet.errors import ConfigError


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader") / "o"
    prepare("synthetic:classes=5,per_class=21,test_per_class=1,size=8,seed=3", out, PrepareOptions(progress=False))
    return open_store(out / "train")  # 105 images


def ids(batches, store):
    """Recover each image's index from its pixels (the synthetic images are all distinct)."""
    flat = store.images[:].reshape(len(store), -1)
    lookup = {row.tobytes(): i for i, row in enumerate(flat)}
    return [lookup[img.permute(1, 2, 0).contiguous().numpy().tobytes()] for x, _ in batches for img in x]


def test_batches_match_indices_and_labels(store):
    loader = Loader(store, 10, seed=7, workers=0)
    batches = list(loader.epoch_batches(0))
    assert len(batches) == len(loader) == 10
    x, y = batches[0]
    assert x.shape == (10, 3, 8, 8) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert ids(batches, store) == loader.indices(0).tolist()
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.from_numpy(store.labels[loader.indices(0)]))


def test_order_depends_only_on_seed_and_epoch(store):
    a, b = Loader(store, 10, seed=7), Loader(store, 10, seed=7, workers=3)
    assert np.array_equal(a.indices(2), b.indices(2))
    assert not np.array_equal(a.indices(2), a.indices(3))
    assert not np.array_equal(a.indices(2), Loader(store, 10, seed=8).indices(2))
    for (xa, ya), (xb, yb) in zip(a.epoch_batches(2), b.epoch_batches(2)):  # threads keep the order
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert np.array_equal(Loader(store, 10, shuffle=False).indices(0), np.arange(100))


def test_start_resumes_mid_epoch_exactly(store):
    loader = Loader(store, 8, seed=1, workers=2)
    full = list(loader.epoch_batches(4))
    resumed = list(loader.epoch_batches(4, start=5))
    assert len(resumed) == len(full) - 5
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(full[5:], resumed))
    assert list(loader.epoch_batches(4, start=len(loader))) == []
    with pytest.raises(ConfigError):
        list(loader.epoch_batches(4, start=len(loader) + 1))


@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_are_disjoint_equal_and_cover(store, drop_last):
    world = 4
    loaders = [Loader(store, 6, seed=2, rank=r, world_size=world, drop_last=drop_last) for r in range(world)]
    assert len({len(l) for l in loaders}) == 1  # DDP needs the same number of steps everywhere
    shares = [l.indices(1) for l in loaders]
    assert len({len(s) for s in shares}) == 1
    if drop_last:
        assert len(set(np.concatenate(shares))) == sum(len(s) for s in shares)  # disjoint
        assert len(loaders[0]) == 105 // world // 6
    else:
        assert set(np.concatenate(shares)) == set(range(105))  # every image, some twice to even out
        assert len(loaders[0]) == -(-27 // 6)
        assert sum(len(b[1]) for b in loaders[0].epoch_batches(1)) == 27


def test_bad_settings_are_config_errors(store):
    with pytest.raises(ConfigError, match="rank"):
        Loader(store, 4, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="no batch"):
        Loader(store, 1000)


def test_set_epoch_and_iter(store):
    loader = Loader(store, 25, seed=0, workers=0)
    loader.set_epoch(3)
    assert ids(list(loader), store) == loader.indices(3).tolist()


def test_balanced_subset_is_fixed_balanced_and_validated():
    from alexnet.data.loader import balanced_subset

    labels = np.repeat(np.arange(4), [50, 50, 50, 3])  # class 3 is too small for its share
    a = balanced_subset(labels, 40)
    assert np.array_equal(a, balanced_subset(labels, 40)) and np.all(np.diff(a) > 0)
    counts = np.bincount(labels[a], minlength=4)
    assert counts.sum() == 40 and counts[3] == 3 and counts[:3].min() >= 10
    assert not np.array_equal(a, balanced_subset(labels, 40, seed=1))
    five = np.repeat(np.arange(5), 20)
    even = np.bincount(five[balanced_subset(five, 23)])
    assert sorted(even) == [4, 4, 5, 5, 5]
    for bad in (0, len(labels) + 1):
        with pytest.raises(ConfigError, match="subset"):
            balanced_subset(labels, bad)


def test_subset_draws_only_from_its_pool(store):
    pool = np.arange(0, len(store), 3)  # 35 of the 105
    loader = Loader(store, 10, seed=2, workers=0, subset=pool)
    assert len(loader) == 3
    seen = ids(loader.epoch_batches(1), store)
    assert set(seen) <= set(pool.tolist()) and len(set(seen)) == 30
    assert seen == loader.indices(1).tolist()
    with pytest.raises(ConfigError, match="subset"):
        Loader(store, 10, subset=np.array([0, len(store)]))
