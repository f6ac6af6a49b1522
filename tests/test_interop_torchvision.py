"""torchvision AlexNet weights in: strict keys, torchvision's preprocessing, class names, downloads."""

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of
from alexnet.cli import main
from alexnet.errors import CheckpointError
from alexnet.interop import download, imagenet_class_names, imagenet_synsets, imagenet_wnids, import_weights
from alexnet.preprocess import TORCHVISION

# torchvision.models.alexnet's state_dict layout (torchvision does not import here).
TV_SHAPES = {
    "features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
    "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3),
    "classifier.1": (4096, 9216), "classifier.4": (4096, 4096), "classifier.6": (None, 4096),
}  # fmt: skip


def tv_state_dict(num_classes: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in TV_SHAPES.items():
        shape = (num_classes if shape[0] is None else shape[0], *shape[1:])
        fan_in = torch.tensor(shape[1:]).prod().item()
        sd[f"{name}.weight"] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        sd[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.1
    return sd


def tv_reference_forward(sd, x):
    """torchvision's AlexNet.forward written as functional calls on the state_dict."""
    h = F.max_pool2d(F.relu(F.conv2d(x, sd["features.0.weight"], sd["features.0.bias"], stride=4, padding=2)), 3, 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, sd["features.3.weight"], sd["features.3.bias"], padding=2)), 3, 2)
    h = F.relu(F.conv2d(h, sd["features.6.weight"], sd["features.6.bias"], padding=1))
    h = F.relu(F.conv2d(h, sd["features.8.weight"], sd["features.8.bias"], padding=1))
    h = F.max_pool2d(F.relu(F.conv2d(h, sd["features.10.weight"], sd["features.10.bias"], padding=1)), 3, 2)
    h = torch.flatten(F.adaptive_avg_pool2d(h, (6, 6)), 1)
    h = F.relu(F.linear(h, sd["classifier.1.weight"], sd["classifier.1.bias"]))
    h = F.relu(F.linear(h, sd["classifier.4.weight"], sd["classifier.4.bias"]))
    return F.linear(h, sd["classifier.6.weight"], sd["classifier.6.bias"])


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    sd = tv_state_dict()
    path = tmp_path_factory.mktemp("tv") / "alexnet-owt-test.pth"
    torch.save(sd, path)
    return sd, path


def test_import_matches_torchvision_forward_and_records_preprocessing(tv_file, tmp_path):
    sd, path = tv_file
    out = tmp_path / "tv.pt"
    assert main(["import-weights", str(path), "--out", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["arch"] == "alexnet-owt"
    pp = preprocess_of(ckpt)
    assert pp == TORCHVISION
    assert (pp.resize, pp.crop, pp.channel_order, pp.std) == (256, 224, "RGB", (0.229, 0.224, 0.225))
    assert pp.scale == pytest.approx(1 / 255) and pp.mean == (0.485, 0.456, 0.406)
    assert ckpt["class_names"][:2] == ["tench", "goldfish"] and ckpt["class_names"][-1] == "toilet tissue"
    model = model_from_checkpoint(ckpt).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = tv_reference_forward(sd, x), model(x)
    assert want.abs().max() > 1.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_strict_keys_are_enforced(tmp_path):
    sd = tv_state_dict(num_classes=10)
    sd["features.1.weight"] = torch.zeros(3)  # an extra key
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected"):
        import_weights(str(tmp_path / "extra.pth"), tmp_path / "x.pt")
    del sd["features.1.weight"], sd["classifier.4.bias"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing"):
        import_weights(str(tmp_path / "missing.pth"), tmp_path / "x.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pth")
    assert main(["import-weights", str(tmp_path / "other.pth"), "--out", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()


def test_known_name_downloads_once_with_hash_check(tmp_path, monkeypatch):
    src = tmp_path / "src" / "alexnet-owt-0000.pth"
    src.parent.mkdir()
    # wrapped ({"state_dict": ...}) with DataParallel's "module." prefix, 4 classes
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv_state_dict(num_classes=4).items()}}, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    good = download.KnownWeights("torchvision", src.as_uri(), "torchvision", digest[:8], "test copy")
    monkeypatch.setitem(download.KNOWN_WEIGHTS, "torchvision", good)
    cache = tmp_path / "cache"
    assert main(["import-weights", "torchvision", "--out", str(tmp_path / "a.pt"), "--cache-dir", str(cache)]) == 0
    ckpt = load_checkpoint(tmp_path / "a.pt")
    assert ckpt["meta"]["imported_from"]["sha256"] == digest
    assert ckpt["model_config"]["num_classes"] == 4 and ckpt["class_names"] is None  # names known for 1000 only
    cached = cache / src.name
    assert cached.is_file()
    src.unlink()  # a verified cached copy is used without the network
    assert download.fetch(good.url, cache, good.sha256_prefix) == cached

    (tmp_path / "src" / "w.bin").write_bytes(b"some weights")
    with pytest.raises(CheckpointError, match="sha256"):
        download.fetch((tmp_path / "src" / "w.bin").as_uri(), tmp_path / "cache2", "deadbeef")
    assert not any((tmp_path / "cache2").iterdir())  # nothing half-written is left behind
    with pytest.raises(CheckpointError, match="cannot download"):
        download.fetch((tmp_path / "nowhere.pth").as_uri(), tmp_path / "cache3")


def test_published_sources_are_listed():
    assert download.KNOWN_WEIGHTS["torchvision"].url.endswith("alexnet-owt-7be5be79.pth")
    assert download.KNOWN_WEIGHTS["bvlc_alexnet"].url.endswith("bvlc_alexnet.npy")


def test_imagenet_classes_ship_with_the_package():
    rows = imagenet_synsets()
    wnids = imagenet_wnids()
    assert len(rows) == 1000 and wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert rows[0] == ("n01440764", "tench, Tinca tinca") and wnids[-1] == "n15075141"
    names = imagenet_class_names()
    assert len(set(names)) == 1000  # the two "crane"s and two "maillot"s get their wnid
    assert names[wnids.index("n02012849")] == "crane (n02012849)"
    assert names[wnids.index("n03126707")] == "crane (n03126707)"
    assert names[wnids.index("n02113186")] == "Cardigan" and names[wnids.index("n02963159")] == "cardigan"


def _torchvision_eval(path) -> torch.Tensor:
    """torchvision's AlexNet_Weights.IMAGENET1K_V1 transform as its code does it: the default image
    loader (Image.open(...).convert("RGB")), Resize(256) (short side 256, long side truncated,
    Pillow bilinear), CenterCrop(224) (offsets int(round(...))), ToTensor (/255), Normalize."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    if min(w, h) != 256:
        long = int(256 * max(w, h) / min(w, h))
        img = img.resize((256, long) if w <= h else (long, 256), Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous().float().div(255)
    return (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _photo(path, w, h, seed, mode="RGB", exif_orientation=None):
    """A photo-like image: smooth gradients and shapes plus fine noise (what resizing filters differ on)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(6 * xx + c) * np.cos(5 * yy - c) for c in range(3)], -1) * 90 + 128
    img = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    pil = Image.fromarray(img).convert(mode)
    kw = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    pil.save(path, quality=90, **kw) if str(path).endswith(".jpg") else pil.save(path)
    return path


def test_imported_torchvision_weights_see_torchvision_eval_transform_exactly(tv_file, tmp_path, capsys):
    from alexnet.inference import Predictor

    sd, path = tv_file
    assert main(["import-weights", str(path), "--out", str(tmp_path / "tv.pt")]) == 0
    predictor = Predictor.load(tmp_path / "tv.pt", device="cpu")
    assert predictor.preprocess.geometry == "torchvision"
    photos = [_photo(tmp_path / f"p{i}.jpg", w, h, i) for i, (w, h) in
              enumerate([(500, 375), (375, 500), (333, 500), (500, 333), (640, 427), (257, 300), (256, 256), (1024, 683)])]  # fmt: skip
    photos += [_photo(tmp_path / "gray.jpg", 480, 360, 20, mode="L"), _photo(tmp_path / "alpha.png", 300, 451, 21, mode="RGBA"),
               _photo(tmp_path / "rotated.jpg", 400, 300, 22, exif_orientation=6)]  # torchvision does not rotate  # fmt: skip
    center = predictor.views("center")
    for p in photos:
        want = _torchvision_eval(p)
        got = center(predictor.read_image(p)[None])[0, 0]
        torch.testing.assert_close(got, want, rtol=0, atol=2e-6, msg=str(p))
        with torch.no_grad():
            torch.testing.assert_close(predictor.model(got[None]), tv_reference_forward(sd, want[None]), rtol=1e-5, atol=1e-4)
    # `alexnet predict` goes through the same reader: its probabilities are the reference's softmax
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(tmp_path / "tv.pt"), str(photos[0]), "--json", "--topk", "5"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    with torch.no_grad():
        ref = torch.softmax(tv_reference_forward(sd, _torchvision_eval(photos[0])[None]), 1)[0]
    values, idx = ref.topk(5)
    assert [t["class"] for t in top] == [predictor.class_names[i] for i in idx.tolist()]
    assert [t["probability"] for t in top] == pytest.approx(values.tolist(), abs=1e-6)
