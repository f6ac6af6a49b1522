"""`alexnet experiment`: every claim runs end to end (tiny) on real colour images, with its table,
figures and seed-paired numbers; the colourfulness index and precision@k on hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from analysis_helpers import make_dataset

from alexnet.analysis.experiments import (EXPERIMENTS, colourfulness, epochs_to, format_table, precision_at_k,
                                          random_halves, run_experiment, tower_means)  # fmt: skip
from alexnet.cli import main
from alexnet.data import open_dataset
from alexnet.errors import AlexNetError, ConfigError, DataError
from alexnet.runtime import git_commit

# tiny nets and short runs: the real code paths, in seconds
TINY = ("batch_size=16", "data.workers=0", "checkpoint_every=100000")
TINY_SMALL = ("model.options.widths=[8,16,16,16,16]", "model.options.fc=[24,24]")


def _png_ok(path) -> None:
    from PIL import Image

    img = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert img.shape[0] > 150 and img.shape[1] > 300 and img.std() > 10  # a real picture, not a blank canvas


def _config(run: str) -> str:
    return (__import__("pathlib").Path(run) / "config.yaml").read_text()


def _table_ok(folder, name, results) -> str:
    table = (folder / "table.md").read_text()
    assert table.startswith(f"### {name}") and results["command"] in table and "alexnet experiment " + name in table
    assert json.loads((folder / "results.json").read_text())["experiment"] == name
    return table


@pytest.mark.parametrize("name", ["pca-lighting", "overlap", "dropout", "depth"])
def test_cifar_ablations_run_end_to_end_with_paired_seeds(cifar_small, tmp_path, name):
    r = run_experiment(name, cifar_small, tmp_path, seeds=2, epochs=1, max_steps=2, overrides=(*TINY, *TINY_SMALL),
                       train_eval=40)  # fmt: skip
    assert list(r["arms"]) == list(EXPERIMENTS[name].arms)
    ref = r["arms"][next(iter(r["arms"]))]["runs"]
    for arm, a in r["arms"].items():
        assert [x["seed"] for x in a["runs"]] == [0, 1] and all(x["steps"] == 2 for x in a["runs"])
        assert all(0 <= x["test_error"] <= 1 and x["train_images"] == 40 for x in a["runs"])
        assert a["summary"]["test_error"]["mean"] == pytest.approx(np.mean([x["test_error"] for x in a["runs"]]))
        if arm != next(iter(r["arms"])):
            diffs = [x["test_error"] - y["test_error"] for x, y in zip(a["runs"], ref)]
            assert r["paired"][arm]["test_error"]["mean"] == pytest.approx(np.mean(diffs))
    table = _table_ok(tmp_path / name, name, r)
    assert all(f"| {arm} |" in table for arm in r["arms"])
    _png_ok(tmp_path / name / "plot.png")
    varied = {"pca-lighting": ("no-lighting", "lighting: 0.0"), "overlap": ("plain-2x2/2", "pooling: non-overlap"),
              "dropout": ("no-dropout", "dropout: 0.0"), "depth": ("no-conv3", "drop_layer: conv3")}[name]  # fmt: skip
    assert varied[1] in _config(r["arms"][varied[0]]["runs"][0]["run"])
    assert "preset" not in _config(ref[0]["run"]) and "lighting: 0.1" in _config(ref[0]["run"])  # the cifar10 preset


def test_the_reference_arm_is_trained_once_for_every_experiment_and_reruns_reuse(cifar_small, tmp_path, capsys):
    args = dict(seeds=1, epochs=1, max_steps=2, overrides=(*TINY, *TINY_SMALL), train_eval=40)
    a = run_experiment("pca-lighting", cifar_small, tmp_path, **args)
    b = run_experiment("overlap", cifar_small, tmp_path, **args)
    assert a["arms"]["lighting"]["runs"][0]["run"] == b["arms"]["overlap-3x3/2"]["runs"][0]["run"]
    result = tmp_path / "runs" / a["arms"]["lighting"]["runs"][0]["run"].rsplit("/", 1)[1] / "result.json"
    stamp = result.stat().st_mtime_ns
    assert main(["experiment", "pca-lighting", "--data", str(cifar_small), "--out", str(tmp_path), "--seeds", "1",
                 "--epochs", "1", "--max-steps", "2", "--train-eval", "40", "--set", *TINY, *TINY_SMALL]) == 0  # fmt: skip
    assert result.stat().st_mtime_ns == stamp  # reused, not retrained
    assert "| no-lighting |" in capsys.readouterr().out
    assert json.loads((tmp_path / "pca-lighting" / "results.json").read_text())["arms"] == a["arms"]


@pytest.mark.parametrize("name, arch", [("relu-vs-tanh", "cifar-18pct"), ("relu-vs-tanh-conv-local", "conv-local")])
def test_fig1_sweeps_one_grid_per_arm_and_repeats_the_fastest_rate(cifar_small, tmp_path, name, arch):
    # tiny: one step per run, so every rate "reaches" any threshold above chance at once or not at all
    over = (*TINY, "stop_train_error=0.99")
    r = run_experiment(name, cifar_small, tmp_path, seeds=2, epochs=1, max_steps=3, overrides=over)
    grid, sweep_epochs = EXPERIMENTS[name].options["lrs"], EXPERIMENTS[name].options["sweep_epochs"]
    for arm, a in r["arms"].items():
        assert [s["lr"] for s in a["sweep"]] == list(grid)
        assert a["best_lr"] in grid and len(a["runs"]) == 2
        assert all(f"lr: {a['best_lr']}" in _config(x["run"]) for x in a["runs"])
        # the sweep runs for at most sweep_epochs; the seeds at the fastest rate for the experiment's epochs
        assert all(f"\nepochs: {sweep_epochs}\n" in _config(x["run"]) for x in a["sweep"])
        assert all("\nepochs: 1\n" in _config(x["run"]) for x in a["runs"])
    assert "activation: tanh" in _config(r["arms"]["tanh"]["runs"][0]["run"])
    cfg = _config(r["arms"]["relu"]["runs"][0]["run"])
    assert f"arch: {arch}" in cfg and "weight_decay: 0.0" in cfg and "flip: false" in cfg  # no regularization
    table = _table_ok(tmp_path / name, name, r)
    assert "fastest learning rate" in table and "paper: about 6x" in table
    _png_ok(tmp_path / name / "plot.png")


def test_lrn_is_the_conv_local_net_with_and_without_its_norms(cifar_small, tmp_path):
    r = run_experiment("lrn", cifar_small, tmp_path, seeds=1, epochs=1, max_steps=1, overrides=TINY, train_eval=20)
    lrn, no_lrn = (_config(r["arms"][a]["runs"][0]["run"]) for a in ("lrn", "no-lrn"))
    assert "arch: conv-local" in lrn and "lrn: false" in no_lrn and "lrn: false" not in lrn
    assert "crop: 24" in lrn and "ten_crop_eval: true" in lrn  # cuda-convnet's translations and multiview test
    _table_ok(tmp_path / "lrn", "lrn", r)


def test_towers_measures_each_half_of_conv1_per_seed(cifar_small, tmp_path):
    r = run_experiment("towers", cifar_small, tmp_path, seeds=1, epochs=1, max_steps=2, overrides=(*TINY, *TINY_SMALL))
    two, one = r["arms"]["two-towers"]["runs"][0], r["arms"]["one-tower"]["runs"][0]
    assert two["towers"] == 2 and one["towers"] == 1 and len(two["index"]) == 8
    assert two["tower_means"] == pytest.approx(tower_means(np.array(two["index"])), abs=1e-3)
    assert two["gap"] == pytest.approx(abs(two["tower_means"][0] - two["tower_means"][1]))
    assert 0.0 < two["p"] <= 1.0 and two["random_gap"] >= 0.0
    assert yaml.safe_load(_config(one["run"]))["model"]["options"]["groups"] == [1, 1, 1, 1, 1]
    assert "gap of random halves" in _table_ok(tmp_path / "towers", "towers", r)
    _png_ok(tmp_path / "towers" / "kernels.png")


def test_neighbors_compares_fc7_with_pixels_and_codes_with_exact_search(cifar_small, tmp_path):
    over = (*TINY, *TINY_SMALL)
    r = run_experiment("neighbors", cifar_small, tmp_path, seeds=1, epochs=1, max_steps=2, overrides=over)
    assert r["queries"] == 400 and r["database"] == 1440 and r["k"] == 5
    assert 0 <= r["fc7_precision"]["mean"] <= 1 and 0 <= r["pixel_precision"] <= 1
    d = r["pixel_distance"]
    assert d["pixel neighbours"] < d["fc7 neighbours"] and d["pixel neighbours"] < d["random training images"]
    assert {row["bits"] for row in r["codes"]["rows"]} == {64, 128, 256}
    table = _table_ok(tmp_path / "neighbors", "neighbors", r)
    assert "precision@5" in table and "| fc7 (Euclidean) |" in table
    for kind in ("fc7", "pixels"):
        _png_ok(tmp_path / "neighbors" / f"neighbors-{kind}.png")


def test_colourfulness_on_constructed_kernels():
    rng = np.random.default_rng(0)
    pattern = rng.standard_normal((1, 1, 5, 5))
    pattern -= pattern.mean()  # so removing the kernel's mean leaves each one as built
    grey = np.repeat(pattern, 3, axis=1)  # R = G = B at every pixel
    red_only = np.concatenate([pattern, np.zeros((1, 2, 5, 5))], axis=1)
    opponent = np.concatenate([pattern, -pattern, np.zeros((1, 1, 5, 5))], axis=1)  # R - G
    blue_yellow = np.concatenate([-pattern / 2, -pattern / 2, pattern], axis=1)  # B - (R + G) / 2
    index = colourfulness(np.concatenate([grey, red_only, opponent, blue_yellow]))
    # grey: no energy off (1,1,1); one channel: 2/3 of it off (|(1,0,0) - 1/3 (1,1,1)|^2 = 2/3); opponents: all
    np.testing.assert_allclose(index, [0.0, 2 / 3, 1.0, 1.0], atol=1e-12)
    assert colourfulness(torch.zeros(1, 3, 3, 3))[0] == 0.0  # a blank kernel is not colourful
    # the index ignores a kernel's mean and its scale
    np.testing.assert_allclose(colourfulness(np.concatenate([red_only * 7 + 3])), [2 / 3], atol=1e-12)
    assert tower_means(np.array([0.0, 0.2, 0.9, 0.7])) == pytest.approx([0.1, 0.8])
    # 4 kernels split into halves 3 ways, equally likely: {0, .2 | .9, .7} gap .7; {0, .9 | .2, .7} gap 0;
    # {0, .7 | .2, .9} gap .2. The towers' own gap .7 is the largest: p = 1/3 of random halves reach it
    chance = random_halves(np.array([0.0, 0.2, 0.9, 0.7]), draws=30_000)
    assert chance["gap"] == pytest.approx(0.7) and chance["p"] == pytest.approx(1 / 3, abs=0.01)
    assert chance["random_gap"] == pytest.approx((0.7 + 0.0 + 0.2) / 3, abs=0.01)
    with pytest.raises(ValueError, match="RGB"):
        colourfulness(np.zeros((4, 1, 5, 5)))


def test_precision_at_k_and_epochs_to_on_hand_computed_cases():
    db_labels = np.array([0, 0, 1, 1, 2])
    neighbors = np.array([[0, 1, 2], [2, 4, 0], [4, 4, 4]])
    queries = np.array([0, 1, 2])
    # query 0: 0, 0 (2 of 2 at k=2); query 1: 1, 2 (1 of 2); query 2: 2, 2 (2 of 2)
    assert precision_at_k(neighbors, db_labels, queries, 2) == pytest.approx((2 + 1 + 2) / 6)
    assert precision_at_k(neighbors, db_labels, queries, 3) == pytest.approx((2 + 1 + 3) / 9)
    curve = [(0.1, 0.6), (0.2, 0.3), (0.3, 0.24), (0.4, 0.1)]
    assert epochs_to(curve, 0.25) == 0.3 and epochs_to(curve, 0.1) == 0.4 and epochs_to(curve, 0.05) is None


def test_colour_claims_refuse_grayscale(tmp_path, capsys):
    gray = make_dataset(tmp_path / "gray", channels=1, size=28, per_class=4, test_per_class=2)
    with pytest.raises(DataError, match="needs RGB"):
        run_experiment("pca-lighting", gray, tmp_path / "r", seeds=1, epochs=1, max_steps=1, overrides=TINY)
    assert main(["experiment", "towers", "--data", str(gray), "--out", str(tmp_path / "r")]) == 2
    assert "needs RGB images" in capsys.readouterr().err


def test_format_table_of_a_saved_result(cifar_small, tmp_path):
    r = run_experiment("dropout", cifar_small, tmp_path, seeds=1, epochs=1, max_steps=1, overrides=(*TINY, *TINY_SMALL),
                       train_eval=20)  # fmt: skip
    assert format_table(json.loads((tmp_path / "dropout" / "results.json").read_text())) == format_table(r)
    assert r["env"]["git_commit"] == git_commit() and f"commit {git_commit()}," in format_table(r)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_jobs_train_every_run_in_workers_with_the_results_of_one_at_a_time(cifar_small, tmp_path, one_thread):
    # the sweep's two rounds (the grid, then the seeds at each arm's fastest rate) and the common
    # arms; every run in a worker at 1 thread (2 // 2), against the same runs in-process at 1 thread
    for name, over in (("relu-vs-tanh", (*TINY, "stop_train_error=0.99")), ("dropout", (*TINY, *TINY_SMALL))):
        args = dict(seeds=1, epochs=1, max_steps=3, overrides=over, train_eval=20)
        torch.set_num_threads(2)
        parent: list[str] = []
        parallel = run_experiment(name, cifar_small, tmp_path / "jobs", jobs=2, log=parent.append, **args)
        torch.set_num_threads(1)
        serial = run_experiment(name, cifar_small, tmp_path / "serial", **args)
        # the runner found every run finished: the workers trained them all, in prefetch rounds
        assert parent and all("at a time at 1 thread(s) each" in m for m in parent)
        assert len(parent) == (2 if name == "relu-vs-tanh" else 1)
        for arm, a in parallel["arms"].items():
            b = serial["arms"][arm]
            assert [r["run"].rsplit("/", 1)[1] for r in a["runs"]] == [r["run"].rsplit("/", 1)[1] for r in b["runs"]]
            assert [r["curve"] for r in a["runs"]] == [r["curve"] for r in b["runs"]]
            assert [r.get("test_error") for r in a["runs"]] == [r.get("test_error") for r in b["runs"]]
            assert a.get("best_lr") == b.get("best_lr")


def test_a_failing_worker_is_one_line_naming_its_run(cifar_small, tmp_path):
    with pytest.raises(AlexNetError, match=r"2 of 2 worker run\(s\) failed, the first 'dropout' seed 0 with exit status 2"):
        run_experiment("dropout", cifar_small, tmp_path, seeds=1, epochs=1, max_steps=1, jobs=2,
                       overrides=(*TINY, *TINY_SMALL, "device=cuda"))  # fmt: skip
    with pytest.raises(ConfigError, match="jobs must be >= 1"):
        run_experiment("dropout", cifar_small, tmp_path, seeds=1, jobs=0)


def test_transfer_trains_a_on_one_half_and_compares_the_arms_on_the_other(cifar_small, tmp_path, monkeypatch, one_thread):
    import dataclasses

    from alexnet.analysis import experiments as E

    monkeypatch.setitem(E.EXPERIMENTS, "transfer", dataclasses.replace(
        E.EXPERIMENTS["transfer"], options={"per_class": (8, 0), "probe_layers": ("pool5", "fc7")}))  # fmt: skip
    over = ("data.workers=0", *TINY_SMALL)
    # in workers (the finetune arms get the source's checkpoint through the worker's spec), then again in-process
    r = run_experiment("transfer", cifar_small, tmp_path, seeds=2, epochs=1, max_steps=2, overrides=over, jobs=2)
    a, b = E.halves(open_dataset(cifar_small)["train"].class_names)
    assert r["classes"] == {"A": a, "B": b} == {"A": ["airplane", "automobile", "bird", "cat", "deer"],
                                                "B": ["dog", "frog", "horse", "ship", "truck"]}  # fmt: skip
    assert open_dataset(r["source"]["data"])["test"].class_names == a and 0 <= r["source"]["test_accuracy"] <= 1
    assert list(r["arms"]) == ["scratch", "finetune", "finetune-frozen-conv", "probe-pool5", "probe-fc7"]
    source_ckpt = str(Path(r["source"]["run"]) / "last.pt")
    for arm, cells in r["arms"].items():
        assert list(cells) == ["8", "0"]
        for n, cell in cells.items():
            runs = cell["runs"]
            assert [x["seed"] for x in runs] == ([0, 1] if n == "8" or not arm.startswith("probe") else [0])
            assert all(0 <= x["test_accuracy"] <= 1 for x in runs)
            if arm.startswith("probe"):
                assert all(x["train_images"] == (40 if n == "8" else 720) for x in runs)
                continue
            for x in runs:
                cfg = yaml.safe_load(_config(x["run"]))
                state = json.loads((Path(x["run"]) / "env.json").read_text())
                assert (state.get("init") or {}).get("source") == (None if arm == "scratch" else source_ckpt)
                assert cfg.get("freeze", "") == ("conv5" if arm == "finetune-frozen-conv" else "")
                # each seed its own 8 a class, at a batch of 8 and the lr scaled with it
                assert cfg["data"]["train_subset"] == (40 if n == "8" else 0)
                assert cfg["data"]["train_subset_seed"] == (x["seed"] if n == "8" else 0)
                assert cfg["batch_size"] == (8 if n == "8" else 128)
                assert cfg["optim"]["lr"] == pytest.approx({"scratch": 0.05, "finetune": 0.01}[arm.split("-")[0]] * (8 / 128 if n == "8" else 1))
    table = _table_ok(tmp_path / "transfer", "transfer", r)
    assert "| from scratch |" in table and "| linear probe on A's fc7 |" in table and "all (144 a class)" in table
    _png_ok(tmp_path / "transfer" / "plot.png")
    # the probes of every layer and size share one feature cache: each layer's splits extracted once
    (cache,) = (tmp_path / "transfer" / "features").iterdir()
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{l}-flip-{s}" for l in ("pool5", "fc7") for s in ("train", "val", "test"))
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/result.json")}
    assert len(stamps) == 1 + 3 * 2 * 2  # the source; 3 arms x 2 seeds x 2 sizes
    again = run_experiment("transfer", cifar_small, tmp_path, seeds=2, epochs=1, max_steps=2, overrides=over)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/result.json")} == stamps  # all reused
    assert again["arms"] == r["arms"]


def test_transfer_needs_a_val_split_and_four_classes(tmp_path):
    from alexnet.analysis.experiments import halves
    from alexnet.data.prepare import PrepareOptions, prepare

    prepare("synthetic:classes=4,per_class=4,size=8", tmp_path / "d", PrepareOptions(workers=1, progress=False))
    with pytest.raises(DataError, match="needs train, val and test splits"):
        run_experiment("transfer", tmp_path / "d", tmp_path / "out", seeds=1, max_steps=1)
    with pytest.raises(DataError, match="two halves of 2 or more; the store has 3"):
        halves(["a", "b", "c"])
