"""Evaluation numbers on known answers; `alexnet evaluate` and `alexnet predict` end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.cli import main
from alexnet.config import load_config
from alexnet.evaluate import evaluate_batches
from alexnet.train import train

TINY = ["model.arch=alexnet-small", "model.options.widths=[16,32,48,48,32]", "model.options.fc=[64,64]",
        "batch_size=32", "data.workers=1", "max_steps=4", "log_every=2"]  # fmt: skip


class PixelOracle(nn.Module):
    """Reads the label written into pixel (0, 0) and answers: right for even classes, label+1 for odd."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = x[:, 0, 0, 0].round().long()
        guess = torch.where(label % 2 == 0, label, (label + 1) % self.num_classes)
        logits = torch.zeros(x.shape[0], self.num_classes)
        logits[torch.arange(x.shape[0]), guess] = 10.0
        logits[torch.arange(x.shape[0]), label] += 5.0  # the truth is always second best (or best)
        return logits


def test_top1_top5_per_class_and_confusion_on_known_answers():
    c, n = 6, 60
    labels = torch.arange(n) % c
    images = torch.zeros(n, 1, 4, 4)
    images[:, 0, 0, 0] = labels.float()
    batches = [(images[i : i + 16], labels[i : i + 16]) for i in range(0, n, 16)]
    res = evaluate_batches(PixelOracle(c), batches, lambda x: x, c, torch.device("cpu"))
    assert res.n == n
    assert res.top1_error == pytest.approx(0.5)  # odd classes are all wrong
    assert res.top5_error == 0.0
    assert res.per_class_accuracy == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    conf = np.array(res.confusion)
    assert conf.sum() == n and conf[1, 2] == 10 and conf[0, 0] == 10 and conf[5, 0] == 10


@pytest.fixture(scope="module")
def trained(fashion_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(load_config("demo", overrides=TINY), fashion_small, out, progress=False)
    return out


def _reference_probs(run, store):
    """Softmax of the centre view and of its mirror, computed by hand from the checkpoint: the demo
    standardises each channel with the store's statistics, and its 28 px crop is the whole image."""
    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt).eval()
    mean, std = (torch.tensor(ckpt["preprocess"][k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    x = (torch.from_numpy(store.read(np.arange(len(store)))).permute(0, 3, 1, 2).float() - mean) / std
    with torch.no_grad():
        return model(x).softmax(1), model(x.flip(-1)).softmax(1)


def test_evaluate_cli_json_center_flip_ten_crop(trained, fashion_small, capsys):
    from alexnet.data import open_dataset

    test = open_dataset(fashion_small)["test"]
    labels = torch.from_numpy(test.labels)
    centre, mirror = _reference_probs(trained, test)
    # a 28 px crop of a 28 px image: the ten crops are five centres and five mirrors
    expected = {"center": centre, "flip": (centre + mirror) / 2, "ten-crop": (centre + mirror) / 2}
    for flag, views in (([], "center"), (["--flip"], "flip"), (["--ten-crop"], "ten-crop")):
        assert main(["evaluate", "--checkpoint", str(trained), "--data", str(fashion_small), "--json", *flag]) == 0
        d = json.loads(capsys.readouterr().out)
        probs = expected[views]
        top1 = probs.argmax(1)
        top5 = probs.topk(5, 1).indices
        assert d["n"] == 256 and d["views"] == views
        assert d["top1_error"] == pytest.approx(1 - (top1 == labels).float().mean().item(), abs=1e-9)
        assert d["top5_error"] == pytest.approx(1 - (top5 == labels[:, None]).any(1).float().mean().item(), abs=1e-9)
        assert d["loss"] == pytest.approx(torch.nn.functional.nll_loss(probs.log(), labels).item(), rel=1e-4)
        conf = np.array(d["confusion"])
        assert conf.sum() == 256 and (conf.sum(1) == np.bincount(test.labels, minlength=10)).all()
        np.testing.assert_array_equal(conf, np.bincount(labels * 10 + top1, minlength=100).reshape(10, 10))


def test_evaluate_cli_errors(trained, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--checkpoint", str(bad), "--data", str(tmp_path)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_predict_answers_good_images_and_names_bad_ones(trained, fashion_small, tmp_path, capsys):
    from alexnet.data import open_dataset

    test = open_dataset(fashion_small)["test"]
    good = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(test.read(np.array([i]))[0, :, :, 0]).save(p)
        good.append(str(p))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    missing = tmp_path / "missing.png"
    code = main(["predict", "--checkpoint", str(trained), good[0], str(broken), good[1], str(missing), good[2],
                 "--topk", "3", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    out = json.loads(captured.out)
    assert [r["path"] for r in out] == [good[0], str(broken), good[1], str(missing), good[2]]
    answered = [r for r in out if "top" in r]
    assert len(answered) == 3 and all(len(r["top"]) == 3 for r in answered)
    assert all(abs(sum(t["probability"] for t in r["top"])) <= 1.0 + 1e-6 for r in answered)
    err = captured.err.strip().splitlines()
    assert len(err) == 2 and "broken.jpg" in err[0] and "missing.png: no such file" in err[1]
    # the same image through predict (from its file) and through evaluate's pipeline: the same probabilities
    assert main(["predict", "--checkpoint", str(trained), good[0], "--json", "--topk", "10"]) == 0
    via_predict = {t["class"]: t["probability"] for t in json.loads(capsys.readouterr().out)[0]["top"]}
    centre, _ = _reference_probs(trained, test)
    names = load_checkpoint(trained)["class_names"]
    via_evaluate = {names[j]: float(p) for j, p in enumerate(centre[0])}
    assert via_predict == pytest.approx(via_evaluate, abs=1e-5)


class _RunsCode:
    """Unpickling this calls os.system: the payload a hostile checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["predict", "evaluate", "import-weights", "serve", "export", "resume"])
def test_a_checkpoint_holding_code_is_refused_in_one_line_of_ours(command, tmp_path, capsys):
    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pt"
    torch.save({"format": "alexnet-checkpoint", "state_dict": {}, "payload": _RunsCode(marker)}, bad)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(bad.read_bytes())
    argv = {"predict": ["predict", "--checkpoint", str(bad), str(image)],
            "evaluate": ["evaluate", "--checkpoint", str(bad), "--data", str(tmp_path)],
            "import-weights": ["import-weights", str(bad), "--out", str(tmp_path / "out.pt")],
            "serve": ["serve", "--checkpoint", str(bad), "--port", "0"],
            "export": ["export", "--checkpoint", str(bad), "--format", "safetensors", "--out", str(tmp_path / "w.st")],
            "resume": ["train", "--resume", str(run), "--no-progress"]}[command]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "holds objects other than tensors and plain data, so it is not loaded" in err, err
    assert "weights_only" not in err and "will likely succeed" not in err
    assert not marker.exists()
