"""`alexnet serve`'s JSON API through Starlette's test client: every checkpoint kind the project
makes or imports, the answers against `alexnet predict` and `neighbors.search`, the missing
parts, and bad input of every kind (each a 4xx with one message, never a 500)."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.checkpoint import save_checkpoint
from alexnet.cli import build_parser, main
from alexnet.config import load_config
from alexnet.data import open_dataset
from alexnet.data.decode import decode_image, decode_like_torchvision
from alexnet.interop.caffe import BVLC_MODEL_OPTIONS
from alexnet.models import create_model
from alexnet.preprocess import CAFFE_BVLC, TORCHVISION, Preprocess
from alexnet.serve import Explorer, ServeOptions, create_app
from alexnet.train import train

starlette_testclient = pytest.importorskip("starlette.testclient", reason="the explorer's test client needs httpx2")
TestClient = starlette_testclient.TestClient

from analysis_helpers import TINY_SMALL, make_dataset  # noqa: E402


def make_run(data: Path, out: Path, epochs: int = 2) -> Path:
    """A tiny alexnet-small trained `epochs` full epochs, validated after each (so metrics.jsonl has curves)."""
    size = open_dataset(data)["train"].size
    cfg = load_config("demo", None, [*TINY_SMALL, f"epochs={epochs}", "precision=fp32", "channels_last=false", "eval_every=1", "log_every=2", "batch_size=8",
                                     "data.workers=0", f"data.crop={size}", "data.pad=0"])  # fmt: skip
    train(cfg, data, out, progress=False)
    return out


def jpeg_bytes(w: int = 40, h: int = 30, mode: str = "RGB", seed: int = 0, fmt: str = "JPEG") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def bomb_png(w: int = 20000, h: int = 20000) -> bytes:
    """A PNG whose header claims w x h pixels (the decoder must refuse it from the header alone)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """A 3-channel 32 px store and a tiny run on it (two validated epochs)."""
    root = tmp_path_factory.mktemp("serve-colour")
    data = make_dataset(root / "data", channels=3, size=32)
    return data, make_run(data, root / "run")


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """A 1-channel 28 px store (the Fashion-MNIST demo's shape) and a tiny run on it."""
    root = tmp_path_factory.mktemp("serve-grey")
    data = make_dataset(root / "data", channels=1, size=28)
    return data, make_run(data, root / "run", epochs=1)


@pytest.fixture(scope="module")
def client(colour):
    data, run = colour
    explorer = Explorer(str(run), ServeOptions(data=str(data), index_progress=False))
    with TestClient(create_app(explorer)) as c:
        c.explorer = explorer
        yield c


# ---------------------------------------------------------------- what the page shows


def test_model_info_layers_towers_and_nothing_missing(client):
    info = client.get("/api/model").json()
    assert info["arch"] == "alexnet-small" and info["towers"] == 2 and info["missing"] == {}
    layers = {layer["name"]: layer for layer in info["layers"]}
    assert list(layers)[:2] == ["conv1", "pool1"] and {"fc6", "fc7", "fc8"} <= set(layers)
    assert layers["conv1"]["shape"] == [8, 32, 32] and layers["conv1"]["towers"] == 2 and layers["conv1"]["kind"] == "maps"
    assert layers["fc7"] == {"name": "fc7", "shape": [24], "kind": "vector", "towers": 1}
    assert info["store"]["split"] == "test" and info["store"]["count"] == 16
    assert client.get("/api/health").json()["status"] == "ok"


def test_explore_answers_top_k_view_and_every_layer(client):
    x = client.get("/api/explore?index=3&k=3").json()
    assert x["image"] == "test:3" and x["store_index"] == 3 and x["class"].startswith("class")
    assert len(x["top"]) == 3 and x["top"][0]["probability"] >= x["top"][1]["probability"] >= x["top"][2]["probability"]
    assert [layer["name"] for layer in x["layers"]] == [layer["name"] for layer in client.explorer.layers]
    conv1 = x["layers"][0]
    assert len(conv1["images"]) == 2 and all(s.startswith("data:image/png;base64,") for s in conv1["images"])
    assert 0 <= conv1["zero_fraction"] <= 1 and conv1["max"] >= conv1["min"]
    # the view is the store image itself (crop = store size): normalisation undone exactly
    store = open_dataset(client.explorer.pick_store.path.parent)["test"]
    view = decode_png(client.get("/api/view.png?index=3").content)
    assert np.abs(view.astype(int) - store.read(np.array([3]))[0].astype(int)).max() <= 1
    # the same maps, per layer, as JSON, .npy and PNG
    fc7 = client.get("/api/activations?index=3&layer=fc7").json()
    assert fc7["shape"] == [24] and len(fc7["values"]) == 24 and min(fc7["values"]) >= 0  # after its ReLU
    arr = np.load(io.BytesIO(client.get("/api/activations?index=3&layer=conv2&format=npy").content))
    assert arr.shape == (16, 16, 16) and arr.dtype == np.float32
    png = decode_png(client.get("/api/activations?index=3&layer=conv2&format=png&scale=layer").content)
    assert png.ndim == 2 and png.shape[0] >= 16


def test_probabilities_match_alexnet_predict(client, tmp_path, capsys):
    """The page's numbers are `alexnet predict`'s: the same store image, written as a PNG file."""
    store = client.explorer.pick_store
    path = tmp_path / "five.png"
    Image.fromarray(store.read(np.array([5]))[0]).save(path)
    assert main(["predict", "--checkpoint", str(client.explorer.source), str(path), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]["top"]
    for answer in (client.get("/api/classify?index=5").json(),
                   client.post("/api/classify", files={"image": ("five.png", path.read_bytes(), "image/png")}).json(),
                   client.post("/api/classify", content=path.read_bytes()).json(),
                   client.get("/api/explore?index=5").json()):  # fmt: skip
        assert [t["class"] for t in answer["top"]] == [t["class"] for t in expected]
        assert np.allclose([t["probability"] for t in answer["top"]], [t["probability"] for t in expected], atol=1e-6)


def test_explore_top_k_is_predictors_with_or_without_the_shared_forward(client, monkeypatch):
    """explore takes the top-k from the last layer's softmax (one forward) when that is the model's
    output, else from Predictor.probs (a second forward): both are classify's numbers, bit for bit."""
    assert client.explorer._logits == "fc8"
    one = client.get("/api/explore?index=9").json()["top"]
    monkeypatch.setattr(client.explorer, "_logits", None)
    assert client.get("/api/explore?index=9").json()["top"] == one == client.get("/api/classify?index=9").json()["top"]


def test_upload_is_kept_by_id_for_later_requests(client):
    data = jpeg_bytes(64, 48, seed=3)
    first = client.post("/api/explore", files={"image": ("a.jpg", data, "image/jpeg")}).json()
    key = first["image"]
    assert key.startswith("upload:") and "class" not in first
    again = client.get(f"/api/classify?image={key}").json()
    assert again["top"][0] == first["top"][0]
    assert client.get(f"/api/activations?image={key}&layer=conv1&format=npy").status_code == 200
    assert client.get("/api/classify?image=test:2").json()["store_index"] == 2  # store images by the same key form


def test_kernels_summary_store_and_run_curves(client):
    k = client.get("/api/kernels").json()
    assert k["count"] == 8 and k["shape"] == [3, 5, 5] and k["towers"] == 2 and len(k["images"]) == 2
    tile = decode_png(client.get("/api/kernels.png?tower=2").content)
    assert tile.ndim == 3 and tile.shape[2] == 3  # colour kernels (Fig. 3)
    s = client.get("/api/summary").json()
    assert s["input_shape"] == [3, 32, 32] and s["params"] == sum(r["params"] for r in s["rows"])
    page = client.get("/api/store?start=10&count=4").json()
    assert [im["index"] for im in page["images"]] == [10, 11, 12, 13] and page["total"] == 16
    assert decode_png(client.get("/api/store/4.png").content).shape == (32, 32, 3)
    run = client.get("/api/run").json()
    assert [v["epoch"] for v in run["validation"]] == [1, 2] and len(run["train"]) >= 4
    assert run["final"]["epoch"] == 2 and 0 <= run["final"]["val_top1_error"] <= 1
    assert client.get("/").headers["content-type"].startswith("text/html")
    for asset in ("/static/explorer.js", "/static/explorer.css"):
        assert client.get(asset).status_code == 200


def test_neighbours_are_alexnet_neighbors_answer(client, tmp_path, capsys):
    x = client.explorer
    assert x.index.wait(120) is not None, x.index.status
    answer = client.get("/api/neighbors?index=7&k=5").json()
    assert answer["count"] == 48 and answer["database"] == "train" and len(answer["neighbors"]) == 5
    # the same query through the CLI over the same cached features
    path = tmp_path / "seven.png"
    Image.fromarray(x.pick_store.read(np.array([7]))[0]).save(path)
    assert main(["neighbors", "--features", str(x.index.folder), "--query", str(path), "-k", "5", "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)["results"][0]["neighbors"]
    assert [n["store_index"] for n in answer["neighbors"]] == [n["store_index"] for n in expected]
    assert np.allclose([n["distance"] for n in answer["neighbors"]], [n["distance"] for n in expected], rtol=1e-5)
    assert all(n["png"].startswith("data:image/png") for n in answer["neighbors"])


# ---------------------------------------------------------------- every checkpoint kind


def _big(kind: str, path: Path) -> Path:
    """Randomly initialised 224/227 px nets with the preprocessing their real weights come with."""
    torch.manual_seed(0)
    if kind == "paper":  # the paper's way: a mean image subtracted (section 2)
        mean = torch.rand(3, 256, 256) * 255
        pp = Preprocess(resize=256, crop=224, mean=(0.0, 0.0, 0.0), mean_image=mean)
        model = create_model("alexnet", num_classes=10)
    elif kind == "owt":
        pp, model = TORCHVISION, create_model("alexnet-owt", num_classes=10)
    else:
        pp, model = CAFFE_BVLC, create_model("alexnet", num_classes=10, **BVLC_MODEL_OPTIONS)
    save_checkpoint(path, model, preprocess=pp, class_names=[f"c{i}" for i in range(10)])
    return path


@pytest.mark.parametrize("kind,towers,crop", [("paper", 2, 224), ("owt", 1, 224), ("caffe", 2, 227)])
def test_every_imported_and_paper_checkpoint_is_served(kind, towers, crop, tmp_path):
    ckpt = _big(kind, tmp_path / f"{kind}.pt")
    explorer = Explorer(str(ckpt), ServeOptions(index_progress=False))
    with TestClient(create_app(explorer)) as c:
        info = c.get("/api/model").json()
        assert info["towers"] == towers and set(info["missing"]) == {"store", "neighbors", "run"}
        assert "checkpoint file" in info["missing"]["run"] and "--data" in info["missing"]["store"]
        data = jpeg_bytes(300, 260, seed=1)
        x = c.post("/api/explore", files={"image": ("x.jpg", data, "image/jpeg")}).json()
        assert len(x["top"]) == 5 and {layer["name"] for layer in x["layers"]} >= {"conv1", "conv5", "fc7", "fc8"}
        conv1 = next(layer for layer in x["layers"] if layer["name"] == "conv1")
        assert conv1["shape"][1:] == [55, 55] and len(conv1["images"]) == towers
        # the network's view, mapped back to pixels, is the centre crop of the decoded image
        view = decode_png(c.get(f"/api/view.png?image={x['image']}").content)
        # (torchvision's weights read files as torchvision does: the square around its own centre crop)
        image = decode_like_torchvision(data, 256, crop) if kind == "owt" else decode_image(data, 256, 3, min_side=1)
        top = (256 - crop) // 2
        assert view.shape == (crop, crop, 3)
        assert np.abs(view.astype(int) - image[top : top + crop, top : top + crop].astype(int)).max() <= 1
        assert len(c.get("/api/kernels").json()["images"]) == towers
        assert c.get("/api/summary").json()["input_shape"] == [3, crop, crop]
        for path in ("/api/store", "/api/store/0.png", "/api/run", "/api/neighbors?index=0", "/api/explore?index=0"):
            r = c.get(path)
            assert r.status_code == 409 and ("--data" in r.json()["error"] or "run folder" in r.json()["error"]), path


def test_grey_demo_shaped_net(grey):
    data, run = grey
    explorer = Explorer(str(run), ServeOptions(data=str(data), index_progress=False))
    with TestClient(create_app(explorer)) as c:
        x = c.get("/api/explore?index=0").json()
        assert x["layers"][0]["shape"] == [8, 28, 28]
        assert decode_png(c.get("/api/view.png?index=0").content).shape == (28, 28)
        assert decode_png(c.get("/api/kernels.png").content).ndim == 2  # one-channel kernels
        # a colour upload is converted to grey the way prepare converts it
        assert c.post("/api/classify", content=jpeg_bytes(50, 50)).status_code == 200


# ---------------------------------------------------------------- bad input: 4xx and one message, never a 500


def bad_files() -> dict[str, tuple[bytes, int | None]]:
    """name -> (file bytes, expected status: None when it is accepted and converted as prepare does)."""
    good = jpeg_bytes()
    palette = Image.new("P", (20, 20), 3)
    return {
        "empty": (b"", 422),
        "truncated JPEG": (good[: len(good) // 2], 422),
        "not an image": (b"not an image at all", 422),
        "PNG header only": (b"\x89PNG\r\n\x1a\n", 422),
        "1x1": (png_bytes(Image.new("RGB", (1, 1))), 422),
        "7x100": (png_bytes(Image.new("RGB", (7, 100))), 422),
        "decompression bomb": (bomb_png(), 413),
        # decodable: converted as prepare converts them (Adobe CMYK inverted, 16-bit scaled, alpha dropped)
        "CMYK JPEG": (jpeg_bytes(mode="CMYK"), None),
        "16-bit PNG": (png_bytes(Image.fromarray(np.full((20, 20), 40000, np.uint16))), None),
        "alpha PNG": (png_bytes(Image.new("RGBA", (20, 20), (10, 200, 30, 0))), None),
        "palette + transparency": (png_bytes(palette, transparency=3), None),
        "grey JPEG": (jpeg_bytes(mode="L"), None),
        "PNG named JPEG": (jpeg_bytes(fmt="PNG"), None),
    }


@pytest.mark.parametrize("name", list(bad_files()))
def test_bad_files_get_a_4xx_with_a_reason_or_are_converted(client, name):
    data, status = bad_files()[name]
    r = client.post("/api/classify", files={"image": ("f.jpg", data, "application/octet-stream")})
    if status is None:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert message and "\n" not in message
    expected = {"empty": "empty", "truncated JPEG": "truncated", "not an image": "not an image", "1x1": "too small",
                "7x100": "too small", "decompression bomb": "bomb"}.get(name)  # fmt: skip
    assert expected is None or expected in message


def test_sixteen_bit_upload_is_scaled_not_clipped(client):
    data = png_bytes(Image.fromarray(np.full((20, 20), 40000, np.uint16)))
    key = client.post("/api/classify", content=data).json()["image"]
    assert np.all(decode_png(client.get(f"/api/view.png?image={key}").content) == round(40000 / 257))


def test_upload_limits_bytes_and_pixels(colour):
    data, run = colour
    explorer = Explorer(str(run), ServeOptions(data=str(data), max_upload_bytes=4000, max_upload_pixels=50 * 50,
                                               index_progress=False))  # fmt: skip
    with TestClient(create_app(explorer)) as c:
        big = jpeg_bytes(200, 200)
        assert len(big) > 4000
        for r in (c.post("/api/classify", content=big), c.post("/api/classify", files={"image": ("b.jpg", big)})):
            assert r.status_code == 413 and "limit" in r.json()["error"]
        r = c.post("/api/classify", content=png_bytes(Image.new("L", (60, 60))))
        assert r.status_code == 413 and "pixels" in r.json()["error"]
        r = c.post("/api/classify", content=b"x" * 100, headers={"content-length": "999999999"})
        assert r.status_code in (400, 413)


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/api/explore", 400),  # no image named
    ("GET", "/api/explore?index=1&image=upload:abc", 400),
    ("GET", "/api/explore?index=abc", 400),
    ("GET", "/api/explore?index=-1", 404),
    ("GET", "/api/explore?index=16", 404),
    ("GET", "/api/explore?index=1&scale=log", 400),
    ("GET", "/api/classify?index=1&k=0", 400),
    ("GET", "/api/classify?index=1&k=1000000", 400),
    ("GET", "/api/classify?image=upload:0000000000000000", 404),
    ("GET", "/api/classify?image=../../../etc/passwd", 404),
    ("GET", "/api/classify?image=test:999", 404),
    ("GET", "/api/classify?image=test:%C2%B2", 404),  # a digit to str.isdigit, not to int()
    ("GET", "/api/classify?index=1&K=5", 400),  # a parameter the endpoint does not take
    ("GET", "/api/activations?index=1", 400),
    ("GET", "/api/activations?index=1&layer=features.conv1", 404),
    ("GET", "/api/activations?index=1&layer=fc7&format=pickle", 400),
    ("GET", "/api/view.png?index=1&kind=raw", 400),
    ("GET", "/api/neighbors?index=1&k=0", 400),
    ("GET", "/api/kernels.png?tower=3", 404),
    ("GET", "/api/kernels.png?tower=x", 400),
    ("GET", "/api/store?start=99", 404),
    ("GET", "/api/store?count=0", 400),
    ("GET", "/api/store/99.png", 404),
    ("GET", "/api/store/..%2F..%2Fetc%2Fpasswd.png", 404),
    ("GET", "/api/store/-1.png", 404),
    ("GET", "/static/../../../../etc/passwd", 404),
    ("GET", "/static/%2e%2e/%2e%2e/app.py", 404),
    ("GET", "/api/nothing", 404),
    ("DELETE", "/api/classify", 405),
    ("POST", "/api/health", 405),
])  # fmt: skip
def test_bad_requests_are_json_4xx(client, method, path, status):
    r = client.request(method, path)
    assert r.status_code == status, r.text
    if not path.startswith("/static"):
        assert r.headers["content-type"] == "application/json" and r.json()["error"]


def test_malformed_multipart_and_forms(client):
    boundary = "xyz"
    bad = [
        ({"content-type": f"multipart/form-data; boundary={boundary}"}, b"--xyz\r\nContent-Disposition: form-data\r\n\r\nnope"),
        ({"content-type": "multipart/form-data"}, b"no boundary"),
        ({"content-type": f"multipart/form-data; boundary={boundary}"},
         b'--xyz\r\nContent-Disposition: form-data; name="k"\r\n\r\n5\r\n--xyz--\r\n'),  # a form without a file
    ]  # fmt: skip
    for headers, body in bad:
        r = client.post("/api/classify", content=body, headers=headers)
        assert r.status_code in (400, 422), r.text
        assert r.json()["error"]


def test_a_thousand_malformed_requests_leave_it_answering(client):
    rng = np.random.default_rng(0)
    layers = ["conv1", "nope", "", "fc7"]
    statuses = []
    for i in range(1000):
        kind = i % 5
        if kind == 0:
            r = client.post("/api/explore", content=rng.bytes(int(rng.integers(0, 2000))))
        elif kind == 1:
            junk = rng.bytes(int(rng.integers(1, 600)))
            r = client.post("/api/classify", files={"image": ("j.jpg", b"\xff\xd8\xff\xe0" + junk, "image/jpeg")})
        elif kind == 2:
            r = client.get(f"/api/activations?index={int(rng.integers(-50, 50))}&layer={layers[i % 4]}&format=json{i}")
        elif kind == 3:
            r = client.get(f"/api/classify?image={rng.bytes(8).hex()}&k={int(rng.integers(-5, 500))}")
        else:
            r = client.post("/api/neighbors?k=x", content=b"--b\r\n" * int(rng.integers(1, 50)),
                            headers={"content-type": "multipart/form-data; boundary=b"})  # fmt: skip
        statuses.append(r.status_code)
    assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert client.get("/api/health").json()["status"] == "ok"
    assert client.get("/api/classify?index=0").status_code == 200


# ---------------------------------------------------------------- the command line


def test_cli_errors_are_one_line(tmp_path, capsys, colour):
    assert main(["serve", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint not found" in err and len(err.splitlines()) == 1
    data, run = colour
    assert main(["serve", str(run), "--data", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(run), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_non_finite_numbers_are_null_not_a_500(colour, tmp_path):
    """A diverged run's NaN loss must not break /api/run (JSON has no NaN)."""
    data, run = colour
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("explorer"))
    with open(copy / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"event": "diverged", "step": 99, "loss": float("nan")}) + "\n")
    with TestClient(create_app(Explorer(str(copy), ServeOptions(index_progress=False)))) as c:
        r = c.get("/api/run")
        assert r.status_code == 200 and r.json()["events"][-1]["loss"] is None


def test_conv_local_has_no_fc7_and_says_so(colour, tmp_path):
    data, _ = colour
    ckpt = save_checkpoint(tmp_path / "conv-local.pt", create_model("conv-local"), preprocess=Preprocess.raw(3, 32, 32))
    explorer = Explorer(str(ckpt), ServeOptions(data=str(data), index_progress=False))
    with TestClient(create_app(explorer)) as c:
        missing = c.get("/api/model").json()["missing"]
        assert "no layer 'fc7'" in missing["neighbors"] and "local4" in missing["neighbors"] and "store" not in missing
        r = c.get("/api/neighbors?index=0")
        assert r.status_code == 409 and "--layer" in r.json()["error"]
        assert [layer["name"] for layer in c.get("/api/explore?index=0").json()["layers"]][-1] == "fc10"
    with_layer = Explorer(str(ckpt), ServeOptions(data=str(data), layer="local4", index_progress=False))
    assert "neighbors" not in with_layer.missing and with_layer.index.wait(120) is not None


def test_listens_on_loopback_unless_told():
    args = build_parser().parse_args(["serve", "run"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.threads == 1
