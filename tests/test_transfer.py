"""Transfer learning on real data: a net trained on CIFAR-10's ten classes, fine-tuned and probed on
five of them as a store of their own (the A/B split of the transfer experiment, at test size)."""

import json

import numpy as np
import pytest
import torch

from alexnet.checkpoint import load_checkpoint, preprocess_of
from alexnet.cli import main
from alexnet.config import load_config
from alexnet.data import open_dataset
from alexnet.data.prepare import PrepareOptions, prepare
from alexnet.errors import DataError
from alexnet.inference import Predictor
from alexnet.train import Trainer, train
from alexnet.train.transfer import frozen_part

# the cifar10 preset's topology at a fraction of its width
TINY = ["model.options.widths=[16,32,48,48,32]", "model.options.fc=[64,64]", "batch_size=32", "data.workers=1",
        "log_every=5", "checkpoint_every=5"]  # fmt: skip
B = ("dog", "frog", "horse", "ship", "truck")


def tiny_cfg(*extra):
    return load_config("cifar10", overrides=TINY + list(extra))


@pytest.fixture(scope="module")
def source(cifar_small, tmp_path_factory):
    """A run trained for 30 steps on all ten classes of the small CIFAR-10 store."""
    out = tmp_path_factory.mktemp("source") / "run"
    train(tiny_cfg("max_steps=30", "epochs=1"), cifar_small, out, progress=False)
    return out


def _b_tree(cifar_small_tree, root):
    for split in ("train", "test"):
        for name in B:
            (root / split).mkdir(parents=True, exist_ok=True)
            (root / split / name).symlink_to(cifar_small_tree / split / name, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def b_tree(cifar_small_tree, tmp_path_factory):
    return _b_tree(cifar_small_tree, tmp_path_factory.mktemp("b-tree"))


@pytest.fixture(scope="module")
def store_b(b_tree, tmp_path_factory):
    """Five of the classes as a store of their own (32 px, val split held out)."""
    out = tmp_path_factory.mktemp("b-store") / "ds"
    prepare(str(b_tree), out, PrepareOptions(val_fraction=0.1, workers=1, progress=False))
    return out


def test_init_loads_every_matching_weight_bit_exactly_and_names_the_new_ones(source, store_b, tmp_path, capsys):
    src = load_checkpoint(source / "last.pt")
    trainer = Trainer(tiny_cfg("epochs=1"), store_b, tmp_path / "ft", init=source, progress=False)
    state = trainer.model.state_dict()
    assert state["classifier.fc8.weight"].shape == (5, 64)
    for key, value in src["state_dict"].items():
        if not key.startswith("classifier.fc8."):
            assert torch.equal(state[key], value), key
    assert trainer.init_info["fresh"] == ["classifier.fc8.weight", "classifier.fc8.bias"]
    # the source's normalisation, not the new store's statistics
    pp, src_pp = trainer.data.preprocess, preprocess_of(src)
    assert pp.mean == src_pp.mean and pp.std == src_pp.std and pp.crop == src_pp.crop == 32
    line = trainer.init_line()
    assert "fc8 (weight 10x64 -> 5x64; bias 10 -> 5)" in line and "14 of 16 tensors loaded" in line

    # through the command line: the same line, the source recorded in the run folder
    assert main(["train", "--preset", "cifar10", *TINY, "max_steps=6", "epochs=1", "--init", str(source),
                 "--data", str(store_b), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "init from" in err and "from the init: fc8" in err
    env = json.loads((tmp_path / "cli" / "env.json").read_text())
    assert env["init"]["source"] == str(source) and env["init"]["fresh"] == ["classifier.fc8.weight", "classifier.fc8.bias"]
    assert "Initialised from" in (tmp_path / "cli" / "report.md").read_text()


def test_an_output_layer_of_the_same_shape_for_other_classes_starts_afresh(source, cifar_small_tree, tmp_path):
    """Ten other classes fit fc8's shape, not its meaning: fc8 is from the init; the same ten classes keep it."""
    src = load_checkpoint(source / "last.pt")
    renamed = tmp_path / "tree"
    for split in ("train", "test"):
        for i, name in enumerate(sorted(p.name for p in (cifar_small_tree / split).iterdir())):
            (renamed / split).mkdir(parents=True, exist_ok=True)
            (renamed / split / f"other-{i}").symlink_to(cifar_small_tree / split / name, target_is_directory=True)
    store = tmp_path / "ds"
    prepare(str(renamed), store, PrepareOptions(workers=1, progress=False))
    trainer = Trainer(tiny_cfg("epochs=1"), store, tmp_path / "ft", init=source, progress=False)
    assert trainer.init_info["fresh"] == ["classifier.fc8.weight", "classifier.fc8.bias"]
    assert "fc8 (weight: other classes; bias: other classes)" in trainer.init_line()
    assert not torch.equal(trainer.model.state_dict()["classifier.fc8.weight"], src["state_dict"]["classifier.fc8.weight"])


def test_freeze_keeps_the_frozen_layers_bit_equal_and_trains_the_rest(source, store_b, tmp_path):
    src = load_checkpoint(source / "last.pt")["state_dict"]
    train(tiny_cfg("epochs=1", "max_steps=8", "freeze=conv5", "optim.head_lr_mult=10"), store_b, tmp_path / "ft",
          init=source, progress=False)  # fmt: skip
    after = load_checkpoint(tmp_path / "ft" / "last.pt")
    state = after["state_dict"]
    for i in range(1, 6):
        for t in ("weight", "bias"):
            key = f"features.conv{i}.{t}"
            assert torch.equal(state[key], src[key]), key  # no gradient and no weight decay
    assert not torch.equal(state["classifier.fc6.weight"], src["classifier.fc6.weight"])
    assert after["train_state"]["config"]["freeze"] == "conv5"
    groups = after["train_state"]["optimizer"]["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    assert sum(len(g["params"]) for g in groups) == 6  # fc6, fc7, fc8: weight and bias

    # a resumed transfer run rebuilds the same groups and keeps the source's normalisation
    resumed = Trainer(None, "", tmp_path / "ft", resume=True, progress=False)
    assert [g["lr_mult"] for g in resumed.optimizer.param_groups] == [1.0, 10.0]
    assert resumed.data.preprocess.mean == preprocess_of(after).mean


def test_freezing_fc7_holds_its_dropout_in_eval_mode(source):
    model = Predictor.load(source, device="cpu").model
    params, modules = frozen_part(model, "fc7")
    assert "classifier.fc7.weight" in params and "classifier.fc8.weight" not in params
    assert modules[-1] == "classifier.drop7"  # the dropout between a frozen fc7 and the new fc8 is off


def test_fine_tuned_checkpoint_works_everywhere(source, store_b, b_tree, tmp_path, capsys):
    run = tmp_path / "ft"
    train(tiny_cfg("epochs=1", "max_steps=6"), store_b, run, init=source, progress=False)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--data", str(store_b), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == len(open_dataset(store_b)["test"]) and len(result["per_class_accuracy"]) == 5
    test_image = sorted((b_tree / "test" / "ship").glob("*.jpg"))[0]
    assert main(["predict", "--checkpoint", str(run), str(test_image), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert {t["class"] for t in top} <= set(B) and len(top) == 5
    assert main(["export", "--checkpoint", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    from starlette.testclient import TestClient

    from alexnet.serve import Explorer, ServeOptions, create_app

    with TestClient(create_app(Explorer(str(run), ServeOptions(data=str(store_b), index_progress=False)))) as client:
        answer = client.post("/api/classify", content=test_image.read_bytes()).json()
    assert [t["class"] for t in answer["top"]] == [t["class"] for t in top]


def test_transfer_errors_are_one_line(source, store_b, cifar_small_tree, tmp_path, capsys):
    def error(*argv):
        assert main(["train", "--preset", "cifar10", *TINY, "--data", str(store_b), "--out", str(tmp_path / "x"),
                     "--no-progress", *argv]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    assert "checkpoint not found" in error("--init", str(tmp_path / "nowhere.pt"))
    assert "has no layer 'conv9'; layers: conv1" in error("--init", str(source), "--freeze", "conv9")
    assert "freezing it leaves nothing to train" in error("--init", str(source), "--freeze", "fc8")
    assert "20 images give no batch of 32" in error(
        "--init", str(source), "data.train_subset=20")  # a handful of photos and the preset's batch
    small = tmp_path / "small"
    prepare(str(_b_tree(cifar_small_tree, tmp_path / "tree")), small, PrepareOptions(size=24, workers=1, progress=False))
    err = error("--init", str(source), "--data", str(small))
    assert "takes 32x32 crops" in err and "holds 24x24 images" in err and "--size 32" in err


def test_probe_separates_linearly_separable_features():
    from alexnet.analysis.probe import choose_and_fit, predict

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 64, generator=g) * 3
    y = torch.arange(400) % 4
    x = centres[y] + torch.randn(400, 64, generator=g)
    l2, val_acc, wb = choose_and_fit((x[:300], y[:300]), (x[300:], y[300:]), 4)
    assert val_acc == 1.0 and (predict(x[300:], wb) == y[300:]).all()


def test_probe_command_draws_per_class_subsets_per_seed(source, store_b, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["probe", str(source), "--data", str(store_b), "--layer", "fc7", "--per-class", "20", "--seeds", "2",
                 "--cache", str(cache), "--json", "--no-progress"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert [r["train_images"] for r in out["results"]] == [100, 100] and out["val_split"] == "val"
    assert out["class_names"] == sorted(B) and len(out["results"][0]["per_class_accuracy"]) == 5
    assert 0.2 < out["mean_test_accuracy"] <= 1.0  # five classes: chance is 0.2
    mtimes = {p: p.stat().st_mtime_ns for p in cache.glob("*/features.npy")}
    assert len(mtimes) == 3  # train, val, test
    assert main(["probe", str(source), "--data", str(store_b), "--cache", str(cache), "--no-progress"]) == 0
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*/features.npy")} == mtimes  # reused, not re-extracted
    assert "test accuracy" in capsys.readouterr().out
    assert main(["probe", str(source), "--data", str(store_b), "--layer", "fc9", "--no-progress"]) == 2
    assert "fc9" in capsys.readouterr().err


def test_the_probe_trains_on_the_images_train_draws_for_the_same_seed():
    from alexnet.analysis.probe import _draw
    from alexnet.data.loader import balanced_subset

    labels = np.random.default_rng(0).integers(0, 5, 600)
    names = list("abcde")
    for seed in (0, 1, 2):
        rows = _draw(labels, np.arange(600), 20, seed, 5, names)
        assert np.array_equal(rows, balanced_subset(labels, 100, seed))  # train data.train_subset=100 train_subset_seed=SEED
        assert np.array_equal(np.bincount(labels[rows]), [20] * 5)
    with pytest.raises(DataError, match="fewer than --per-class 500"):
        _draw(labels, np.arange(600), 500, 0, 5, names)
