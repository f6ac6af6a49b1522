"""`alexnet train --preset cifar10` on a real CIFAR-10 subset: the preset validates, trains, and its
report shows what colour data adds (colour kernels tower by tower, test images, named classes)."""

from __future__ import annotations

import pytest

from alexnet.cli import main
from alexnet.config import load_config
from alexnet.inference import Predictor
from alexnet.train.loop import Trainer
from alexnet.train.rundir import RunDir

# the preset's recipe on a net a few times narrower, for seconds of CPU
SMALL = ("data.workers=0", "batch_size=32", "log_every=5")


def _narrow(cfg) -> tuple[str, ...]:
    widths = [max(8, w // 3) for w in cfg.model.options.get("widths", (64, 128, 192, 192, 128))]
    widths = [w + w % 2 for w in widths]  # the grouped layers need even widths
    return (f"model.options.widths={widths}", "model.options.fc=[32,32]") if "widths" in cfg.model.options else ()


def test_the_preset_validates_on_a_real_colour_store(cifar_small, tmp_path):
    cfg = load_config("cifar10")
    assert cfg.data.val_split == "val" and cfg.epochs >= 1  # it watches the held-out split, never the test split
    trainer = Trainer(load_config("cifar10", overrides=[*SMALL, *_narrow(cfg)]), cifar_small, tmp_path / "run", progress=False)
    assert trainer.data.val_split == "val" and trainer.data.selects
    assert trainer.data.preprocess.in_chans == 3
    assert [op.std for op in trainer.data.transform.ops if op.name == "lighting"] == [cfg.data.lighting]
    assert trainer.model.num_classes == 10


def test_a_few_steps_reduce_the_loss_and_the_report_shows_colour(cifar_small, tmp_path, capsys):
    cfg = load_config("cifar10")
    run = tmp_path / "run"
    args = ["train", "--preset", "cifar10", "--data", str(cifar_small), "--out", str(run), "--no-progress",
            *SMALL, *_narrow(cfg), "epochs=3", "optim.warmup_epochs=0.2", "optim.lr=0.02"]  # a narrow net: a lower lr
    assert main(args) == 0
    losses = [m["loss"] for m in RunDir(run).metrics() if "loss" in m and "event" not in m]
    assert len(losses) >= 10 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1  # from chance's ln 10 = 2.30 down
    final = [m for m in RunDir(run).metrics() if "val_top1_error" in m][-1]
    assert final["split"] == "val" and final["val_top1_error"] < 0.85  # chance: 0.9
    report = (run / "report.md").read_text()
    assert "| test images | 400" in report and "## conv1 kernels (Fig. 3), tower by tower" in report
    assert "airplane" in report and "Confusion matrix (test)" in report and "top-5 predictions" in report
    weight, towers = Predictor.load(run, device="cpu").conv1()
    assert cfg.model.arch == "alexnet-small" and weight.shape[1] == 3 and towers == 2  # conv1's two towers, as the paper's
    from PIL import Image

    kernels = Image.open(run / "figures" / "conv1_kernels.png").convert("RGB")
    pixels = list(kernels.getdata())
    assert sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 40) > 50  # colour, not grey


@pytest.mark.parametrize("bad", ["cifar10x"])
def test_an_unknown_preset_is_one_line(bad, cifar_small, tmp_path, capsys):
    assert main(["train", "--preset", bad, "--data", str(cifar_small), "--out", str(tmp_path / "r")]) == 2
    assert "unknown preset 'cifar10x'; presets: paper, demo, cifar10" in capsys.readouterr().err
