"""`alexnet experiment`: every claim runs end to end (tiny), with its table, plot and paired seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from analysis_helpers import TINY_SMALL, make_dataset

from alexnet.analysis.experiments import EXPERIMENTS, epochs_to, format_table, run_experiment
from alexnet.cli import main
from alexnet.errors import DataError

TINY = ("batch_size=16", "data.workers=0")



@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("exp") / "rgb", channels=3, size=32, per_class=8, test_per_class=3)


@pytest.fixture(scope="module")
def rgb16(tmp_path_factory):
    """16 px images: the conv-local net's locally connected layers are slow on CPU, and 16 px is enough here."""
    return make_dataset(tmp_path_factory.mktemp("exp16") / "rgb16", channels=3, size=16, per_class=8, test_per_class=3)


def _small(name: str) -> bool:
    return "model.arch=alexnet-small" in EXPERIMENTS[name].base


def _png_ok(path) -> None:
    from PIL import Image

    img = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert img.shape[0] > 200 and img.shape[1] > 400 and img.std() > 10  # a real picture, not a blank canvas


def _check(folder, name: str, seeds: int, steps: int) -> dict:
    saved = json.loads((folder / "results.json").read_text())
    assert saved["experiment"] == name and list(saved["arms"]) == list(EXPERIMENTS[name].arms)
    for a in saved["arms"].values():
        assert [run["seed"] for run in a["runs"]] == list(range(seeds))
        for run in a["runs"]:
            assert run["steps"] == steps and 0 <= run["test_error"] <= 1 and 0 <= run["train_error"] <= 1
            assert run["gap"] == pytest.approx(run["test_error"] - run["train_error"])
        s = a["summary"]["test_error"]
        assert s["n"] == seeds and s["mean"] == pytest.approx(np.mean([x["test_error"] for x in a["runs"]]))
        if seeds > 1:
            assert s["std"] == pytest.approx(np.std([x["test_error"] for x in a["runs"]], ddof=1))
    first = list(saved["arms"])[0]
    for arm in list(saved["arms"])[1:]:
        ref = {x["seed"]: x["test_error"] for x in saved["arms"][first]["runs"]}
        diffs = [x["test_error"] - ref[x["seed"]] for x in saved["arms"][arm]["runs"]]
        assert saved["paired"][arm]["test_error"]["mean"] == pytest.approx(np.mean(diffs))
    table = (folder / "table.md").read_text()
    assert table.startswith(f"### {name}") and all(f"| {arm} |" in table for arm in saved["arms"])
    assert "alexnet experiment " + name in table and saved["command"] in table
    _png_ok(folder / "plot.png")
    return saved


def _config(folder, arm: str) -> str:
    return (folder / "runs" / f"{arm.replace('/', '_')}-seed0" / "config.yaml").read_text()


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "lrn"])
def test_every_experiment_runs_end_to_end(rgb, rgb16, tmp_path, name):
    data, extra = (rgb, TINY_SMALL) if _small(name) else (rgb16, ())
    run_experiment(name, data, tmp_path, seeds=1, epochs=1, max_steps=1, overrides=TINY + extra, train_eval=12)
    _check(tmp_path / name, name, seeds=1, steps=1)
    if name == "relu-vs-tanh":
        folder = tmp_path / name
        assert "activation: tanh" in _config(folder, "tanh") and "activation: tanh" not in _config(folder, "relu")
    if name == "depth":
        assert "drop_layer: conv3" in _config(tmp_path / name, "no-conv3")
    if name == "pca-lighting":
        assert "lighting: 0.1" in _config(tmp_path / name, "lighting-0.1")


def test_lrn_with_two_seeds_reruns_from_its_runs_and_through_the_cli(rgb16, tmp_path, capsys):
    a = run_experiment("lrn", rgb16, tmp_path, seeds=2, epochs=1, max_steps=2, overrides=TINY, train_eval=12)
    saved = _check(tmp_path / "lrn", "lrn", seeds=2, steps=2)
    assert "lrn: false" in _config(tmp_path / "lrn", "no-lrn")
    stamp = (tmp_path / "lrn" / "runs" / "lrn-seed0" / "result.json").stat().st_mtime_ns
    # the same command again (here through the CLI) reuses the finished runs and gives the same numbers
    assert main(["experiment", "lrn", "--data", str(rgb16), "--out", str(tmp_path), "--seeds", "2", "--epochs", "1",
                 "--max-steps", "2", "--train-eval", "12", "--set", *TINY]) == 0  # fmt: skip
    assert (tmp_path / "lrn" / "runs" / "lrn-seed0" / "result.json").stat().st_mtime_ns == stamp
    assert "| lrn |" in capsys.readouterr().out
    again = json.loads((tmp_path / "lrn" / "results.json").read_text())
    assert again["arms"] == saved["arms"] and a["paired"] == again["paired"]


def test_pca_lighting_refuses_grayscale_and_cli_reports_it(tmp_path, capsys):
    gray = make_dataset(tmp_path / "gray", channels=1, size=28, per_class=4, test_per_class=2)
    with pytest.raises(DataError, match="needs RGB"):
        run_experiment("pca-lighting", gray, tmp_path / "r", seeds=1, epochs=1, max_steps=1, overrides=TINY)
    assert main(["experiment", "pca-lighting", "--data", str(gray), "--out", str(tmp_path / "r")]) == 2
    assert "needs RGB images" in capsys.readouterr().err


def test_epochs_to_threshold_and_relu_table():
    metrics = [{"epoch": 0.1, "train_error": 0.6}, {"epoch": 0.2, "train_error": 0.3}, {"event": "x"},
               {"epoch": 0.3, "train_error": 0.24}, {"epoch": 0.4, "train_error": 0.1}]  # fmt: skip
    assert epochs_to(metrics, 0.25) == 0.3 and epochs_to(metrics, 0.1) == 0.4 and epochs_to(metrics, 0.05) is None
    s = {"mean": 0.2, "std": 0.0, "n": 1, "missing": 0}
    arm = {"summary": {"test_error": s, "train_error": s, "gap": s, "epochs_to_0.25": {"mean": 0.5, "std": 0.1, "n": 2,
           "missing": 0}, "epochs_to_0.15": {**s, "mean": 1.0}, "epochs_to_0.1": {"mean": None, "std": None, "n": 0,
           "missing": 2}}}  # fmt: skip
    tanh = {"summary": {**arm["summary"], "epochs_to_0.25": {"mean": 3.0, "std": 0.0, "n": 2, "missing": 0}}}
    table = format_table({"experiment": "relu-vs-tanh", "arms": {"relu": arm, "tanh": tanh}, "seeds": 2, "epochs": 4,
                          "max_steps": 0, "train_eval": 10, "claim": "c", "command": "cmd"})  # fmt: skip
    assert "0.50 +- 0.10" in table and "not reached" in table and "25%: 6.00x" in table


def test_a_training_subset_is_what_train_error_is_measured_on(rgb, tmp_path):
    over = (*TINY, *TINY_SMALL, "data.train_subset=20")
    saved = run_experiment("dropout", rgb, tmp_path, seeds=1, epochs=1, overrides=over, train_eval=1000)
    for arm in saved["arms"].values():
        run = arm["runs"][0]
        assert run["train_images"] == 20 and run["steps"] == 20 // 16  # one epoch of the subset
