"""`alexnet visualize`: every figure is written, is a real picture, and shows what it claims."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analysis_helpers import make_dataset, make_run

from alexnet.analysis.features import extract_features
from alexnet.cli import main
from alexnet.figures import conv1_kernels, kernel_mosaic, training_curves


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig")
    data = make_dataset(root / "data")
    run = make_run(data, root / "run", steps=6)
    extract_features(run, data, root / "train", device="cpu")
    extract_features(run, data, root / "test", split="test", device="cpu")
    return root, data, run


def _picture(path, min_h: int = 150, min_w: int = 300) -> np.ndarray:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 5_000
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    assert img.shape[0] >= min_h and img.shape[1] >= min_w and img.std() > 10  # not a blank canvas
    return img


@pytest.mark.parametrize("figure", ["kernels", "neighbors", "query-neighbors", "predictions", "curves"])
def test_each_visualize_figure_is_written(setup, figure, tmp_path, capsys):
    root, data, run = setup
    out = tmp_path / f"{figure}.png"
    args = {
        "kernels": ["kernels", "--checkpoint", str(run)],
        "neighbors": ["neighbors", "--features", str(root / "train"), "--query-features", str(root / "test"),
                      "--num-queries", "4", "-k", "5"],
        "query-neighbors": ["neighbors", "--features", str(root / "train"), "--query", *_query_files(root, data), "-k", "3"],
        "predictions": ["predictions", "--checkpoint", str(run), "--data", str(data), "--split", "test", "--count", "6"],
        "curves": ["curves", "--run", str(run)],
    }[figure]  # fmt: skip
    assert main(["visualize", *args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    if figure == "kernels":  # RGB kernels: how colourful each half is, against random halves
        assert "colourfulness of conv1's halves:" in printed and "random halves of the same kernels" in printed
    _picture(out)


def _query_files(root, data) -> list[str]:
    from PIL import Image

    from alexnet.data import open_dataset

    store = open_dataset(data)["test"]
    paths = []
    for i in (0, 7):
        paths.append(str(root / f"q{i}.png"))
        Image.fromarray(store.read([i])[0]).save(paths[-1])
    return paths


def test_kernel_mosaic_scales_each_kernel_and_splits_towers(tmp_path):
    w = torch.zeros(4, 3, 2, 2)
    w[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])  # a red ramp
    w[1] = 5.0  # constant: must not divide by zero
    m = kernel_mosaic(w.numpy(), cols=2)
    assert m.shape == (5, 5, 3)  # 2x2 kernels, 2 per row, 1 px gaps
    np.testing.assert_allclose(m[0:2, 0:2, 0], [[0, 1 / 3], [2 / 3, 1]])
    assert (m[2, :, :] == 1).all() and (m[:, 2, :] == 1).all()  # white gaps
    assert np.isfinite(m).all()
    gray = kernel_mosaic(np.random.default_rng(0).standard_normal((6, 1, 5, 5)), cols=3)
    assert gray.ndim == 2 and gray.min() == 0 and gray.max() == 1
    big = conv1_kernels(torch.randn(96, 3, 11, 11), tmp_path / "fig3.png", towers=2)  # the paper's conv1
    img = _picture(big, 250, 500)
    assert img.shape[1] > 1.6 * img.shape[0]  # two towers side by side


def test_training_curves_mark_lr_drops(tmp_path, monkeypatch):
    import alexnet.figures as figures

    lines = []
    real = figures._save

    def spy(fig, out):
        lines.extend(line.get_xdata()[0] for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == ":")
        return real(fig, out)

    monkeypatch.setattr(figures, "_save", spy)
    metrics = [{"step": s, "epoch": s / 10, "loss": 2 - s / 50, "train_error": 0.9 - s / 100, "lr": 0.01 if s < 50 else 0.001}
               for s in range(5, 80, 5)]  # fmt: skip
    metrics += [{"epoch": e, "val_top1_error": 0.5, "val_top5_error": 0.2, "val_loss": 1.0, "lr": 0.01, "lr_dropped": e == 8}
                for e in range(1, 9)]  # fmt: skip
    training_curves(metrics, tmp_path / "c.png")
    assert sorted(set(lines)) == [5.0, 8]  # a step drop seen in the logged lr, and the plateau drop
    _picture(tmp_path / "c.png")


def test_training_curves_of_a_run_with_nothing_logged_draw_no_legend_and_warn_nothing(tmp_path):
    """A 20-step run logs no point; its figure is drawn without matplotlib's "No artists with labels" warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = training_curves([{"event": "start", "step": 0, "time": 0.0}], tmp_path / "curves.png")
    assert out.exists() and out.stat().st_size > 0
