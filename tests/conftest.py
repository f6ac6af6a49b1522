import os
import tempfile

import pytest
import torch

# Tests are small; two threads keep them from fighting each other on a 2-core machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Inductor's compile cache does not key on ATEN_CPU_CAPABILITY or ONEDNN_MAX_CPU_ISA: a run under the
# AVX2 emulation reused kernels built for AVX-512 (and the reverse) and corrupted the heap. One cache
# folder per vector level keeps the emulated and native test runs apart.
_level = f"{torch.backends.cpu.get_cpu_capability()}-{os.environ.get('ONEDNN_MAX_CPU_ISA', 'native')}".lower()
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor-alexnet-{_level}"))


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


# ---------------------------------------------------------------- real colour data: CIFAR-10 (JPEG q75 copy)

import re  # noqa: E402
import tarfile  # noqa: E402


def shared_data() -> Path:
    """../shared/data beside the checkout (CI lays it there), or $ALEXNET_SHARED_DATA."""
    env = os.environ.get("ALEXNET_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


CIFAR_JPEG = "cifar10-jpeg.tar.gz"
CIFAR_SMALL = {"train": 160, "test": 40}  # images per class: 1,600 + 400, class-balanced
CIFAR_MEMBER = re.compile(r"^(train|test)/([a-z]+)/(\d+\.jpg)$")


@pytest.fixture(scope="session")
def cifar_small_tree(tmp_path_factory):
    """A class-balanced 2,000-image subset of CIFAR-10 (JPEG q75 copy) as train/<class>/, test/<class>/ JPEGs.

    The first 160 train and 40 test files of each class in archive order, streamed out of the
    tar.gz (one pass, no full extraction).
    """
    archive = shared_data() / CIFAR_JPEG
    if not archive.is_file():
        pytest.skip(f"{archive} is absent (CIFAR-10 JPEG copy; set ALEXNET_SHARED_DATA to its folder)")
    root = tmp_path_factory.mktemp("cifar-small")
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            m = CIFAR_MEMBER.match(member.name)
            if not (m and member.isfile()):
                continue
            split, cls, name = m.groups()
            if taken.get((split, cls), 0) >= CIFAR_SMALL[split]:
                continue
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
            dest = root / split / cls / name  # built from the matched parts: no path from the archive is trusted
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(member).read())
    assert len(taken) == 20 and set(taken.values()) == set(CIFAR_SMALL.values()), taken
    return root


@pytest.fixture(scope="session")
def cifar_small(cifar_small_tree, tmp_path_factory):
    """cifar_small_tree prepared with --val-fraction 0.1 (no --size): a 32x32x3 store, train 1,440 / val 160 / test 400."""
    from alexnet.data.prepare import PrepareOptions, prepare

    out = tmp_path_factory.mktemp("cifar-small-store") / "ds"
    prepare(str(cifar_small_tree), out, PrepareOptions(val_fraction=0.1, workers=1, progress=False))
    return out


# ---------------------------------------------------------------- downloads, tested without the internet

import functools  # noqa: E402
import http.server  # noqa: E402
import threading  # noqa: E402


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request log on stderr
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def serve_folder():
    """serve_folder(path) -> base URL of a loopback HTTP server for that folder; .requests lists the paths asked for."""
    servers = []

    def start(folder):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
        server.requests = []
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        start.requests = server.requests
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
