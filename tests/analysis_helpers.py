"""Tiny datasets and checkpoints shared by the tests/test_analysis_*.py files."""

from __future__ import annotations

from pathlib import Path

from alexnet.config import load_config
from alexnet.data.prepare import PrepareOptions, prepare
from alexnet.train import train

# A small alexnet-small: the real topology, narrow enough to train a few steps in a second.
TINY_SMALL = ("model.options.widths=[8,16,16,16,16]", "model.options.fc=[24,24]")


def make_dataset(path: Path, *, channels: int = 3, size: int = 32, classes: int = 4, per_class: int = 12,
                 test_per_class: int = 4) -> Path:  # fmt: skip
    spec = f"synthetic:classes={classes},per_class={per_class},test_per_class={test_per_class},size={size},channels={channels},seed=0"
    prepare(spec, path, PrepareOptions(progress=False))
    return path


def make_run(data: Path, out: Path, steps: int = 4) -> Path:
    """A checkpointed alexnet-small run (a few steps: the weights only need to be non-trivial)."""
    cfg = load_config("demo", None, [*TINY_SMALL, "epochs=1", f"max_steps={steps}", "batch_size=8", "data.workers=0",
                                     f"data.crop={_size(data)}", "data.pad=0"])  # fmt: skip
    train(cfg, data, out, progress=False)
    return out


def _size(data: Path) -> int:
    from alexnet.data import open_dataset

    return open_dataset(data)["train"].size
