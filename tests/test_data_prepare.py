"""prepare: sources, bad files, stores, statistics, kill-and-rerun, the CLI."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from alexnet.cli import main
from alexnet.data import open_dataset, open_store
from alexnet.data.decode import BadImage, decode_image, resize_center_crop
from alexnet.data.prepare import PrepareOptions, prepare
from alexnet.errors import DataError

sources_mod = sys.modules["alexnet.data.sources"]
OPTS = PrepareOptions(size=16, workers=1, progress=False)


def jpeg(path, w=40, h=30, seed=0, mode="RGB", **kw):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=kw.pop("format", "JPEG"), **kw)
    return path


def bomb_png(path, w=20000, h=20000):
    """A PNG whose header claims w x h pixels (Pillow reads only the header before refusing it)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def test_bad_files_are_converted_or_skipped_with_a_reason(tmp_path, monkeypatch):
    src = tmp_path / "src" / "a"
    jpeg(src / "good.JPEG")
    jpeg(src / "gray.JPEG", mode="L")
    jpeg(src / "cmyk.JPEG", mode="CMYK")
    jpeg(src / "png_named.JPEG", format="PNG")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(src / "sixteen.png")
    Image.new("P", (20, 20), 3).save(src / "palette.png", transparency=3)
    Image.new("RGBA", (20, 20), (10, 200, 30, 0)).save(src / "alpha.png")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(src / "rotated.JPEG", exif=exif)
    (src / "zero.JPEG").write_bytes(b"")
    data = (src / "good.JPEG").read_bytes()
    (src / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    (src / "text.JPEG").write_text("not an image at all")
    Image.new("RGB", (1, 1)).save(src / "tiny.png")
    bomb_png(src / "bomb.png")
    jpeg(src / "secret.JPEG")
    os.symlink(src / "nowhere.JPEG", src / "broken.JPEG")
    jpeg(tmp_path / "src" / "b" / "other.JPEG")
    secret = str(src / "secret.JPEG")
    real_open = open

    def fake_open(path, *a, **k):  # tests run as root, where chmod 000 does not stop reads
        if str(path) == secret:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(sources_mod, "open", fake_open, raising=False)
    result = prepare(str(tmp_path / "src"), tmp_path / "out", OPTS)
    reasons = {Path(p).name: r for p, r in (line.split("\t")[1:] for line in (tmp_path / "out" / "report.tsv").read_text().splitlines()[1:])}
    assert set(reasons) == {"zero.JPEG", "truncated.JPEG", "text.JPEG", "tiny.png", "bomb.png", "secret.JPEG", "broken.JPEG"}
    assert reasons["zero.JPEG"] == "empty file"
    assert "truncated" in reasons["truncated.JPEG"]
    assert reasons["text.JPEG"] == "not an image"
    assert "too small" in reasons["tiny.png"] and "bomb" in reasons["bomb.png"]
    assert "permission" in reasons["secret.JPEG"] and reasons["broken.JPEG"] == "broken symlink"
    assert result["skipped"] == 7
    store = open_dataset(tmp_path / "out")["train"]
    assert len(store) == 9 and store.manifest["counts_per_class"] == {"a": 8, "b": 1}
    names = [Path(p).name for p in sorted(str(p) for p in (tmp_path / "src").rglob("*"))]
    assert store.rows is not None and store.images.shape == (9, 16, 16, 3)
    sixteen = store.images[[i for i, p in enumerate(sorted(
        p for p in (src).iterdir() if p.name not in reasons)) if p.name == "sixteen.png"][0]]
    assert np.all(sixteen == round(40000 / 257))  # 16-bit scaled, not clipped to white
    assert names  # listing worked


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    arr = np.random.default_rng(orientation).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "x.jpg"
    Image.fromarray(arr).save(p, exif=exif, quality=95)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
    got = decode_image(p.read_bytes(), size=ref.shape[0] if ref.shape[0] < ref.shape[1] else ref.shape[1], min_side=1)
    want = resize_center_crop(ref, min(ref.shape[:2]))
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 2.0  # same decoder family; orientation exact


def test_decode_downscales_and_crops_center():
    img = np.zeros((100, 300, 3), np.uint8)
    img[:, 100:200] = 255  # the central square is white, the sides black
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    out = decode_image(buf.getvalue(), 20)
    assert out.shape == (20, 20, 3) and out[:, 1:-1].min() == 255  # only the border column sees the black sides
    assert out[:, [0, -1]].min() > 200
    with pytest.raises(BadImage, match="empty"):
        decode_image(b"", 20)


def test_store_contents_labels_and_statistics(tmp_path):
    result = prepare("synthetic:classes=3,per_class=7,test_per_class=2,size=8,seed=1", tmp_path / "o",
                     PrepareOptions(workers=1, progress=False, shard_bytes=8 * 8 * 3 * 5))  # 5 rows per shard
    ds = open_dataset(tmp_path / "o")
    assert list(ds) == ["train", "test"] and result["splits"]["train"]["count"] == 21
    s = ds["train"]
    assert len(s.manifest["shards"]) == 5 and s.size == 8 and s.channels == 3 and s.num_classes == 3
    assert s.labels.dtype == np.int64 and np.array_equal(s.labels, np.repeat(np.arange(3), 7))
    from alexnet.data.arrays import synthetic

    src = synthetic("classes=3,per_class=7,test_per_class=2,size=8,seed=1", "").splits["train"].items.images
    idx = np.array([20, 0, 13, 5, 5])
    assert np.array_equal(s.read(idx), src[idx]) and np.array_equal(s.images[3:9], src[3:9])
    pixels = src.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(s.stats.mean_image, src.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s.stats.channel_std, pixels.std(0), rtol=1e-9)
    s.verify()
    with open(s.path / "images-00001.npy", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01" if f.read(1) != b"\x01" else b"\x02")
    with pytest.raises(DataError, match="corrupt"):
        s.verify()


def test_val_fraction_is_stratified_and_reproducible(tmp_path):
    prepare("synthetic:classes=4,per_class=10,size=4", tmp_path / "a", PrepareOptions(val_fraction=0.2, progress=False))
    ds = open_dataset(tmp_path / "a")
    assert list(ds) == ["train", "val", "test"]
    assert np.array_equal(np.bincount(ds["val"].labels), [2, 2, 2, 2]) and len(ds["train"]) == 32


def fake_imagenet(root, flat_val=True):
    wnids = ["n01440764", "n01443537", "n01484850"]
    for k, w in enumerate(wnids):
        for i in range(2):
            jpeg(root / "train" / w / f"{w}_{i}.JPEG", seed=10 * k + i)
    val_labels = [2, 0, 1, 1]  # indices into sorted wnids
    # devkit ids are NOT sorted-wnid order: id 1 -> n01484850, 2 -> n01440764, 3 -> n01443537
    id_of = {"n01484850": 1, "n01440764": 2, "n01443537": 3}
    kit = root / "ILSVRC2012_devkit_t12" / "data"
    kit.mkdir(parents=True)
    (kit / "meta.txt").write_text("1 n01484850 great white shark, white shark\n2 n01440764 tench, Tinca tinca\n3 n01443537 goldfish, Carassius auratus\n")
    (kit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{id_of[wnids[l]]}\n" for l in val_labels))
    for i, l in enumerate(val_labels):
        d = root / "val" if flat_val else root / "val" / wnids[l]
        jpeg(d / f"ILSVRC2012_val_{i + 1:08d}.JPEG", seed=100 + i)
    return wnids, val_labels


@pytest.mark.parametrize("flat", [True, False])
def test_imagenet_layout_with_fake_devkit(tmp_path, flat):
    wnids, val_labels = fake_imagenet(tmp_path / "in", flat_val=flat)
    prepare(str(tmp_path / "in"), tmp_path / "out", OPTS)
    ds = open_dataset(tmp_path / "out")
    assert ds["train"].manifest["class_ids"] == wnids
    assert ds["train"].class_names == ["tench", "goldfish", "great white shark"]
    expected = val_labels if flat else sorted(val_labels)  # folders are read in sorted-wnid order
    assert ds["val"].labels.tolist() == expected
    assert ds["train"].manifest["source"]["kind"] == "imagenet"


def test_imagenet_synsets_names_and_missing_devkit(tmp_path):
    fake_imagenet(tmp_path / "in")
    syn = tmp_path / "LOC_synset_mapping.txt"
    syn.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\nn01484850 great white shark\n")
    from alexnet.data import resolve_source

    assert resolve_source(str(tmp_path / "in"), synsets=str(syn)).class_names == ["tench", "goldfish", "great white shark"]
    (tmp_path / "in" / "ILSVRC2012_devkit_t12" / "data" / "meta.txt").unlink()
    (tmp_path / "in" / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").write_bytes(b"MATLAB")
    with pytest.raises(DataError, match="cannot read .*meta.mat"):
        resolve_source(str(tmp_path / "in"))


def test_clear_errors_for_bad_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(str(tmp_path / "missing"), tmp_path / "o", OPTS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        prepare(str(tmp_path / "empty"), tmp_path / "o", OPTS)
    jpeg(tmp_path / "tree" / "a" / "x.jpg")
    (tmp_path / "tree" / "b").mkdir()
    with pytest.raises(DataError, match="b has no images"):
        prepare(str(tmp_path / "tree"), tmp_path / "o", OPTS)
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of its 1 images"):
        prepare(str(tmp_path / "bad"), tmp_path / "o2", OPTS)
    with pytest.raises(DataError, match="not a complete"):
        open_dataset(tmp_path / "o2")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="refusing"):
        prepare("synthetic:size=4,per_class=1", foreign, OPTS)
    assert (foreign / "keep.txt").read_text() == "mine"


KILLABLE = """
import sys, time
P = sys.modules["alexnet.data.prepare"] if "alexnet.data.prepare" in sys.modules else __import__("importlib").import_module("alexnet.data.prepare")
from alexnet.data.decode import decode_image
P.SAVE_EVERY_S = 0.0
decoded = 0
def slow(*a, **k):  # two chunks of 4 decode, then the process hangs until it is killed
    global decoded
    decoded += 1
    while decoded > 8:
        time.sleep(0.05)
    return decode_image(*a, **k)
P.decode_image = slow
P.prepare(sys.argv[1], sys.argv[2], P.PrepareOptions(size=16, workers=1, chunk=4, progress=False))
"""


def test_killed_prepare_never_looks_complete_and_rerun_finishes(tmp_path):
    for i in range(120):
        jpeg(tmp_path / "src" / f"c{i % 3}" / f"{i}.jpg", seed=i)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(tmp_path / "src"), str(out)])
    state = out / ".prepare" / "train.state.npz"

    def saved() -> int:  # chunks the child's saved state marks done (0 before its first save)
        try:
            return int(np.load(state)["done"].sum())
        except (OSError, ValueError, KeyError, EOFError):
            return 0

    deadline = time.time() + 60
    while saved() < 2 and time.time() < deadline and proc.poll() is None:  # both chunks saved; it hangs in the third
        time.sleep(0.02)
    with pytest.raises(DataError, match="being prepared by another process"):  # it is still running
        prepare(str(tmp_path / "src"), out, PrepareOptions(size=16, workers=1, chunk=4, progress=False))
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "dataset.json").exists() and not (out / "train" / "manifest.json").exists()
    with pytest.raises(DataError, match="not a complete"):
        open_dataset(out)
    done_before = int(np.load(state)["done"].sum())
    assert done_before == 2  # killed part-way: the two chunks it finished, not the one it hung in
    r = prepare(str(tmp_path / "src"), out, PrepareOptions(size=16, workers=1, chunk=4, progress=False))
    assert r["splits"]["train"]["count"] == 120 and not (out / ".prepare").exists()
    fresh = prepare(str(tmp_path / "src"), tmp_path / "fresh", PrepareOptions(size=16, workers=2, chunk=4, progress=False))
    assert fresh["splits"]["train"]["count"] == 120
    a, b = open_store(out / "train"), open_store(tmp_path / "fresh" / "train")
    assert np.array_equal(a.images[:], b.images[:]) and np.array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.stats.mean_image, b.stats.mean_image)
    np.testing.assert_array_equal(a.stats.eigvals, b.stats.eigvals)
    assert prepare(str(tmp_path / "src"), out, PrepareOptions(size=16, workers=1, chunk=4, progress=False))["already_complete"]
    with pytest.raises(DataError, match="different prepared dataset"):
        prepare(str(tmp_path / "src"), out, PrepareOptions(size=8, workers=1, chunk=4, progress=False))


def test_idx_folder_and_fashion_mnist_content_check(tmp_path, serve_folder):
    import gzip

    d = tmp_path / "idx"
    d.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", 0x803, n, 28, 28) + imgs.tobytes()))
        (d / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    prepare(str(d), tmp_path / "o", OPTS.__class__(workers=1, progress=False))
    ds = open_dataset(tmp_path / "o")
    assert ds["train"].size == 28 and ds["train"].channels == 1 and ds["train"].class_names[:2] == ["0", "1"]
    assert np.array_equal(ds["test"].images[:][..., 0], imgs)
    with pytest.raises(DataError, match="differ from Fashion-MNIST"):
        prepare(f"fashion-mnist:{d}", tmp_path / "o3", OPTS)
    from alexnet.data.arrays import download_fashion_mnist

    with pytest.raises(DataError, match="wrong content"):
        download_fashion_mnist(tmp_path / "dl", base_url=serve_folder(d))  # right names, wrong bytes
    assert not (tmp_path / "dl" / "train-images-idx3-ubyte.gz").exists()  # not kept
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="cannot download .*404.*dataset-fashion-mnist"):
        download_fashion_mnist(tmp_path / "dl2", base_url=serve_folder(tmp_path / "nothing"))


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_download_path_checks_content(tmp_path, serve_folder):
    from alexnet.data.arrays import download_fashion_mnist, idx_folder

    url = serve_folder(DEBIAN)
    download_fashion_mnist(tmp_path / "fm", base_url=url)  # the real download code, a loopback server
    src = idx_folder(tmp_path / "fm", require_fashion=True)
    assert src.kind == "fashion-mnist" and len(src.splits["train"]) == 60000 and src.class_names[9] == "Ankle boot"
    asked = len(serve_folder.requests)
    download_fashion_mnist(tmp_path / "fm", base_url=url)  # present with the right content: nothing fetched
    assert len(serve_folder.requests) == asked == 4


def test_cli_prepare_json_and_one_line_errors(tmp_path, capsys):
    assert main(["prepare", "synthetic:classes=2,per_class=3,size=4", str(tmp_path / "o"), "--json", "--workers", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["splits"]["train"]["count"] == 6 and out["size"] == 4
    assert main(["prepare", str(tmp_path / "nope"), str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err


# ---------------------------------------------------------------- the store size when --size is not given


def test_small_images_keep_their_native_size(tmp_path, capsys):
    for i in range(6):
        jpeg(tmp_path / "tree" / "train" / f"c{i % 2}" / f"{i}.jpg", w=20, h=20, seed=i)
        jpeg(tmp_path / "tree" / "test" / f"c{i % 2}" / f"{i}.jpg", w=28, h=20, seed=10 + i)  # short side 20 too
    r = prepare(str(tmp_path / "tree"), tmp_path / "o", PrepareOptions(workers=1, progress=False))
    assert (r["size"], r["size_from"]) == (20, "native") and "20 px" in r["size_detail"]
    ds = open_dataset(tmp_path / "o")
    src = np.asarray(Image.open(tmp_path / "tree" / "train" / "c0" / "0.jpg"))
    assert ds["train"].images.shape == (6, 20, 20, 3) and np.array_equal(ds["train"].images[0], src)  # untouched pixels
    assert main(["prepare", str(tmp_path / "tree"), str(tmp_path / "o"), "--workers", "1", "--no-progress"]) == 0
    assert "20x20x3 (native size: every image's short side is 20 px; --size to change)" in capsys.readouterr().out
    r = prepare(str(tmp_path / "tree"), tmp_path / "up", PrepareOptions(size=40, workers=1, progress=False))
    assert (r["size"], r["size_from"]) == (40, "--size")  # an explicit upscale still works
    assert open_dataset(tmp_path / "up")["test"].images.shape == (6, 40, 40, 3)


def test_differing_small_sizes_ask_for_size_and_large_images_get_256(tmp_path):
    jpeg(tmp_path / "mixed" / "a" / "0.jpg", w=24, h=24)
    jpeg(tmp_path / "mixed" / "a" / "1.jpg", w=48, h=40)
    jpeg(tmp_path / "mixed" / "b" / "2.jpg", w=24, h=30)
    with pytest.raises(DataError, match=r"short sides differ \(24..40 px.*--size 40 keeps the largest.*--size 24"):
        prepare(str(tmp_path / "mixed"), tmp_path / "o", PrepareOptions(workers=1, progress=False))
    assert prepare(str(tmp_path / "mixed"), tmp_path / "o", PrepareOptions(size=24, workers=1, progress=False))["size"] == 24
    Image.new("RGB", (4, 4)).save(tmp_path / "mixed" / "b" / "tiny.png")  # below --min-side: skipped, not counted
    (tmp_path / "mixed" / "b" / "junk.jpg").write_bytes(b"not an image")  # unreadable: decoding reports it
    jpeg(tmp_path / "mixed" / "a" / "1.jpg", w=24, h=24)
    assert prepare(str(tmp_path / "mixed"), tmp_path / "o2", PrepareOptions(workers=1, progress=False))["size"] == 24
    jpeg(tmp_path / "big" / "a" / "0.jpg", w=300, h=260)
    jpeg(tmp_path / "big" / "a" / "1.jpg", w=24, h=24)
    r = prepare(str(tmp_path / "big"), tmp_path / "o3", PrepareOptions(workers=1, progress=False))
    assert (r["size"], r["size_from"]) == (256, "default")  # an image reaches 256: the paper's rescaling


def test_size_probe_reads_few_headers_on_large_image_trees(tmp_path, monkeypatch):
    from alexnet.data import sizing
    from alexnet.data.sources import FileItems, Source, Split

    big = str(jpeg(tmp_path / "big.jpg", w=320, h=300))
    small = str(jpeg(tmp_path / "small.jpg", w=32, h=32))
    reads = []
    real = sizing.image_size
    monkeypatch.setattr(sizing, "image_size", lambda items, i: reads.append(i) or real(items, i))

    def source(paths):
        return Source("folder", "t", ["a"], ["a"], {"train": Split("train", np.zeros(len(paths), np.int64), FileItems(paths))})

    n = 1_000_000  # an ImageNet-sized listing: the first sampled header decides
    assert sizing.choose_size(source([big] * n), None).size == 256 and len(reads) == 1
    reads.clear()
    assert sizing.choose_size(source([small] * 999 + [big] + [small] * 2000), None).size == 256
    assert len(reads) < 3000  # the sample missed the big one, the full scan found it
    reads.clear()
    assert sizing.choose_size(source([small] * 3000), None) == sizing.SizeChoice(32, "native", "every image's short side is 32 px")
    assert len(reads) == sizing.SAMPLE + 3000  # every header, once the sample is all small


# ---------------------------------------------------------------- alexnet verify


def test_verify_cli_finds_corrupt_and_missing_files(tmp_path, capsys):
    prepare("synthetic:classes=2,per_class=20,test_per_class=4,size=8", tmp_path / "o",
            PrepareOptions(val_fraction=0.25, workers=1, progress=False, shard_bytes=8 * 8 * 3 * 10))  # fmt: skip
    out = str(tmp_path / "o")
    assert main(["verify", out, "--no-progress"]) == 0
    assert "intact" in capsys.readouterr().out
    assert main(["verify", out + "/val", "--json", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and r["splits"] == ["val"] and r["files"] == 3 and r["problems"] == []

    with open(tmp_path / "o" / "train" / "images-00001.npy", "r+b") as f:  # one flipped byte in a shard
        f.seek(-5, 2)
        b = f.read(1)
        f.seek(-5, 2)
        f.write(bytes([b[0] ^ 1]))
    (tmp_path / "o" / "test" / "labels.npy").unlink()
    (tmp_path / "o" / "val" / "manifest.json").unlink()
    assert main(["verify", out, "--no-progress", "--workers", "3"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:3] == ["val/manifest.json: missing", "train/images-00001.npy: corrupt (sha256 mismatch)",
                         "test/labels.npy: missing"]  # fmt: skip
    assert "3 bad" in lines[3] and len(lines) == 4
    assert main(["verify", out, "--json", "--no-progress"]) == 1
    r = json.loads(capsys.readouterr().out)
    assert not r["ok"] and {p["file"] for p in r["problems"]} == {"val/manifest.json", "train/images-00001.npy", "test/labels.npy"}
    with pytest.raises(DataError, match="images-00001.npy is corrupt"):
        open_store(tmp_path / "o" / "train").verify(workers=2)

    assert main(["verify", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# ---------------------------------------------------------------- a prepared dataset as a source: class subsets


def test_a_prepared_dataset_is_a_source_for_a_class_subset_at_any_size(tmp_path, capsys):
    full = tmp_path / "full"
    prepare("synthetic:classes=4,per_class=6,size=8", full, PrepareOptions(val_fraction=0.5, workers=1, progress=False))
    whole = open_dataset(full)
    # two decoding processes: the store's items travel to them as a path and rows
    assert main(["prepare", str(full), str(tmp_path / "half"), "--classes", "class3,class1", "--workers", "2",
                 "--no-progress"]) == 0  # fmt: skip
    assert "store 8x8x3" in capsys.readouterr().out
    half = open_dataset(tmp_path / "half")
    assert list(half) == list(whole) == ["train", "val", "test"]
    for name, split in half.items():
        keep = np.flatnonzero(np.isin(whole[name].labels, [1, 3]))
        assert split.class_names == ["class1", "class3"]  # the source's order, renumbered from 0
        assert np.array_equal(split.labels, (whole[name].labels[keep] == 3).astype(np.int64))
        assert np.array_equal(split.read(np.arange(len(split))), whole[name].read(keep))  # the pixels as stored
        assert split.manifest["counts_per_class"] == {"class1": int((split.labels == 0).sum()), "class3": int(split.labels.sum())}
    # the stats are the subset's own, not the full store's
    assert not np.allclose(half["train"].stats.mean_image, whole["train"].stats.mean_image)
    # another size from the same store: the pixels resized, the labels kept
    assert main(["prepare", str(full), str(tmp_path / "big"), "--size", "16", "--workers", "1", "--no-progress"]) == 0
    big = open_dataset(tmp_path / "big")
    assert big["train"].size == 16 and np.array_equal(big["train"].labels, whole["train"].labels)
    capsys.readouterr()
    # one line each: an unknown class, the input as its own output
    assert main(["prepare", str(full), str(tmp_path / "x"), "--classes", "class1,dog", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'dog' not among the 4 classes" in err and "class0, class1" in err
    assert main(["prepare", str(full), str(full), "--classes", "class1", "--no-progress"]) == 2
    assert "is the dataset being read" in capsys.readouterr().err


def test_classes_select_from_any_source_by_folder_name(tmp_path):
    for c in ("ant", "bee", "cat"):
        for i in range(3):
            jpeg(tmp_path / "tree" / c / f"{i}.jpg", seed=i)
    out = prepare(str(tmp_path / "tree"), tmp_path / "o", PrepareOptions(size=16, workers=1, progress=False, classes=("cat", "ant")))
    train = open_dataset(tmp_path / "o")["train"]
    assert out["num_classes"] == 2 and train.class_names == ["ant", "cat"] and np.array_equal(train.labels, [0, 0, 0, 1, 1, 1])
    assert train.manifest["source"]["classes"] == ["ant", "cat"]
