import os

import pytest
import torch

# Tests are small; two threads keep them from fighting each other on a 2-core machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


import gzip  # noqa: E402
from pathlib import Path  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _write_idx_subset(src: Path, dst: Path, stem: str, n: int) -> None:
    data = gzip.decompress((src / f"{stem}.gz").read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    per = 1
    for d in dims[1:]:
        per *= d
    header = data[:4] + n.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims[1:])
    (dst / stem).write_bytes(header + data[4 + 4 * ndim : 4 + 4 * ndim + n * per])


@pytest.fixture(scope="session")
def fashion_small(tmp_path_factory):
    """A real Fashion-MNIST subset (first 640 train, 256 test images) prepared into a store."""
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make test installs it)")
    from alexnet.data.prepare import PrepareOptions, prepare

    raw = tmp_path_factory.mktemp("fashion-raw")
    for prefix, n in (("train", 640), ("t10k", 256)):
        _write_idx_subset(FASHION, raw, f"{prefix}-images-idx3-ubyte", n)
        _write_idx_subset(FASHION, raw, f"{prefix}-labels-idx1-ubyte", n)
    out = tmp_path_factory.mktemp("fashion-store") / "ds"
    prepare(str(raw), out, PrepareOptions(progress=False))
    return out
