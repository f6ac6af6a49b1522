"""A full disk is one line naming the file, the space it needs and the space free, and keeps what was there.

On a real small filesystem (a tmpfs, where the tests run as root) for the store, the feature cache and
the exports; the same errors from a monkeypatched write everywhere else. Training's checkpoints are
tested in test_train.py.
"""

import errno
import os
import subprocess

import numpy as np
import pytest
import torch

from alexnet import files
from alexnet.checkpoint import atomic_save, save_checkpoint
from alexnet.cli import main
from alexnet.errors import DiskFullError
from alexnet.models import create_model


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KB filesystem."""
    path = tmp_path / "small"
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("needs root to mount a small tmpfs")
    yield path
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    torch.manual_seed(0)
    save_checkpoint(path, create_model("alexnet-small", num_classes=10).eval(), class_names=[str(i) for i in range(10)])
    return path


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "the disk is full: writing" in err and "free there" in err, err
    return err


def test_prepare_on_a_full_disk_says_what_the_store_needs_before_any_work(small_disk, capsys):
    out = small_disk / "store"
    assert main(["prepare", "synthetic:classes=2,per_class=50,size=64", str(out), "--no-progress"]) == 2
    err = _one_error_line(capsys)
    assert "needs 1,2" in err and "KB" in err, err  # 100 x 64 x 64 x 3 bytes: the reservation is exact
    assert not (out / "dataset.json").exists()


def test_features_on_a_full_disk_leave_no_half_cache(small_disk, small_ckpt, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["prepare", "synthetic:classes=10,per_class=100,size=28,channels=1", str(data), "--no-progress"]) == 0
    capsys.readouterr()
    out = small_disk / "fc7"
    assert main(["features", "--checkpoint", str(small_ckpt), "--data", str(data), "--split", "train",
                 "--out", str(out), "--device", "cpu"]) == 2  # fmt: skip
    _one_error_line(capsys)
    assert not out.exists() and not list(small_disk.iterdir())


@pytest.mark.parametrize("fmt", ["onnx", "safetensors", "torchscript"])
def test_export_on_a_full_disk_keeps_the_previous_file(small_disk, small_ckpt, fmt, capsys):
    pytest.importorskip("onnxruntime") if fmt == "onnx" else None
    out = small_disk / f"model.{fmt}"
    out.write_bytes(b"the previous export")
    assert main(["export", "--checkpoint", str(small_ckpt), "--format", fmt, "--out", str(out)]) == 2
    err = _one_error_line(capsys)
    assert f"the previous model.{fmt} is kept" in err, err
    assert out.read_bytes() == b"the previous export" and [p.name for p in small_disk.iterdir()] == [out.name]


def test_a_write_that_finds_the_disk_full_keeps_the_previous_file(tmp_path, monkeypatch):
    """Everywhere (no mount needed): the writer's ENOSPC, however torch reports it, becomes our one error."""
    path = tmp_path / "w.pt"
    atomic_save({"w": torch.zeros(4)}, path)
    before = path.read_bytes()
    real_init = files._CountingFile.__init__

    class FullAfter1K:  # the temp file of a disk that fills up after its first kilobyte
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(data)
            if self.n > 1024:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(files._CountingFile, "__init__", lambda self, f: real_init(self, FullAfter1K(f)))
    with pytest.raises(DiskFullError, match=r"the disk is full: writing .*w\.pt needed more than .* free there; "
                       r"the previous w\.pt is kept"):  # fmt: skip
        atomic_save({"w": torch.zeros(100_000)}, path)  # torch.save turns the OSError into a RuntimeError of its own
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.pt"]


def test_a_store_reservation_that_finds_the_disk_full_removes_its_file(tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "posix_fallocate", full)
    with pytest.raises(DiskFullError, match=r"writing .*images\.npy needs 4 KB"):
        files.open_memmap_allocated(tmp_path / "images.npy", np.uint8, (4, 32, 32))
    assert not (tmp_path / "images.npy").exists()
