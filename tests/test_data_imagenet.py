"""ImageNet with the official devkit: data/meta.mat (MATLAB, read with scipy) and a flat val/ with its ground
truth; and the three archives as image-net.org ships them, read in place."""

import gzip
import io
import json
import tarfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from alexnet.cli import main
from alexnet.data import open_dataset, open_store, resolve_source
from alexnet.data.imagenet import read_meta_mat
from alexnet.data.prepare import PrepareOptions, prepare
from alexnet.errors import DataError

FIELDS = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
# Leaves first with ids 1..3 that are NOT in sorted-wnid order (as in the real file, where ID 1
# is n02119789 "kit fox"), then non-leaf synsets after them (num_children > 0).
LEAVES = [(1, "n02119789", "kit fox, Vulpes macrotis"), (2, "n01440764", "tench, Tinca tinca"),
          (3, "n01443537", "goldfish, Carassius auratus")]  # fmt: skip
PARENTS = [(4, "n02118333", "fox", [1]), (5, "n01439121", "cyprinid", [2, 3])]
SORTED_WNIDS = sorted(w for _, w, _ in LEAVES)  # class index order: n01440764, n01443537, n02119789


def write_meta_mat(path):
    """A meta.mat in the devkit's structure: a (N, 1) struct array `synsets` with the devkit's eight fields."""
    rows = []
    for i, wnid, words in LEAVES:
        rows.append((i, wnid, words, f"gloss of {words}", 0, np.zeros((0, 0)), 0, 1300))
    for i, wnid, words, children in PARENTS:
        rows.append((i, wnid, words, f"gloss of {words}", len(children), np.asarray(children, np.uint16), 1, 0))
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in FIELDS])
    for k, row in enumerate(rows):
        synsets[k, 0] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"synsets": synsets})


def make_tree(root):
    rng = np.random.default_rng(0)
    for k, wnid in enumerate(SORTED_WNIDS):
        for i in range(2):
            d = root / "train" / wnid
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(d / f"{wnid}_{i}.JPEG")
    val_wnids = ["n02119789", "n01440764", "n01443537", "n02119789", "n01443537"]  # in val filename order
    id_of = {w: i for i, w, _ in LEAVES}
    (root / "val").mkdir()
    for n, _ in enumerate(val_wnids, 1):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "val" / f"ILSVRC2012_val_{n:08d}.JPEG")
    kit = root / "ILSVRC2012_devkit_t12" / "data"
    write_meta_mat(kit / "meta.mat")
    (kit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{id_of[w]}\n" for w in val_wnids))
    return [SORTED_WNIDS.index(w) for w in val_wnids]


def test_meta_mat_maps_ids_to_wnids_leaves_only(tmp_path):
    write_meta_mat(tmp_path / "meta.mat")
    ids, words = read_meta_mat(tmp_path / "meta.mat")
    assert ids == {1: "n02119789", 2: "n01440764", 3: "n01443537"}  # the non-leaf synsets 4, 5 are not classes
    assert words["n02119789"] == "kit fox, Vulpes macrotis"


def test_flat_val_with_devkit_labels_in_sorted_wnid_order(tmp_path):
    want = make_tree(tmp_path / "in")
    prepare(str(tmp_path / "in"), tmp_path / "out", PrepareOptions(workers=1, progress=False))
    ds = open_dataset(tmp_path / "out")
    assert ds["train"].manifest["class_ids"] == SORTED_WNIDS
    assert ds["train"].class_names == ["tench", "goldfish", "kit fox"]
    assert ds["val"].labels.tolist() == want == [2, 0, 1, 2, 1]
    assert np.array_equal(ds["train"].labels, [0, 0, 1, 1, 2, 2])
    assert ds["val"].manifest["source"]["val_layout"] == "flat+devkit" and ds["train"].size == 30  # native: all < 256
    src = resolve_source(str(tmp_path / "in"), devkit=str(tmp_path / "in" / "ILSVRC2012_devkit_t12"))
    assert src.info["class_descriptions"][2] == "kit fox, Vulpes macrotis"


def test_bad_devkit_files_are_one_clear_error(tmp_path):
    make_tree(tmp_path / "in")
    data = tmp_path / "in" / "ILSVRC2012_devkit_t12" / "data"
    scipy.io.savemat(data / "meta.mat", {"other": np.zeros(3)})
    with pytest.raises(DataError, match="meta.mat.*synsets"):
        resolve_source(str(tmp_path / "in"))
    write_meta_mat(data / "meta.mat")
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n")
    with pytest.raises(DataError, match="has 2 labels but .* has 5 images"):
        resolve_source(str(tmp_path / "in"))
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n3\n1\n9\n")
    with pytest.raises(DataError, match="not among the train classes"):
        resolve_source(str(tmp_path / "in"))


# ---------------------------------------------------------------- the archives as image-net.org ships them


def encoded(rng, mode="RGB", fmt="JPEG", w=40, h=30):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(buf, fmt)
    return buf.getvalue()


def imagenet_files():
    """{wnid: {name: bytes}} for train (with a corrupt JPEG, CMYK, grayscale and a PNG named .JPEG, as real
    ImageNet has), {name: bytes} for val, and the val images' wnids in name order."""
    rng = np.random.default_rng(1)
    train = {w: {f"{w}_{i}.JPEG": encoded(rng) for i in range(3)} for w in SORTED_WNIDS}
    cls = train[SORTED_WNIDS[1]]
    cls[f"{SORTED_WNIDS[1]}_cmyk.JPEG"] = encoded(rng, "CMYK")
    cls[f"{SORTED_WNIDS[1]}_gray.JPEG"] = encoded(rng, "L")
    cls[f"{SORTED_WNIDS[1]}_png.JPEG"] = encoded(rng, fmt="PNG")
    good = cls[f"{SORTED_WNIDS[1]}_0.JPEG"]
    cls[f"{SORTED_WNIDS[1]}_bad.JPEG"] = good[: len(good) // 2]  # cut short: skipped and reported
    val_wnids = ["n02119789", "n01440764", "n01443537", "n02119789", "n01443537"]
    val = {f"ILSVRC2012_val_{n:08d}.JPEG": encoded(rng) for n in range(1, len(val_wnids) + 1)}
    return train, val, val_wnids


def tar_bytes(files, mode="w"):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def devkit_files(val_wnids, tmp):
    write_meta_mat(tmp / "meta.mat")
    id_of = {w: i for i, w, _ in LEAVES}
    return {"ILSVRC2012_devkit_t12/COPYING": b"licence",
            "ILSVRC2012_devkit_t12/data/meta.mat": (tmp / "meta.mat").read_bytes(),
            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": "".join(f"{id_of[w]}\n" for w in val_wnids).encode()}  # fmt: skip


def write_archives(folder, which=("train", "val", "devkit")):
    """The three files exactly as image-net.org ships them: an outer train tar of per-wnid inner tars,
    a flat val tar, the devkit tar.gz. Returns what the unpacked tree holds (for write_tree)."""
    train, val, val_wnids = imagenet_files()
    folder.mkdir(parents=True, exist_ok=True)
    if "train" in which:
        inner = {f"{w}.tar": tar_bytes(files) for w, files in train.items()}
        (folder / "ILSVRC2012_img_train.tar").write_bytes(tar_bytes(dict(reversed(inner.items()))))  # not in wnid order
    if "val" in which:
        (folder / "ILSVRC2012_img_val.tar").write_bytes(tar_bytes(val))
    if "devkit" in which:
        (folder / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(tar_bytes(devkit_files(val_wnids, folder.parent), "w:gz"))
    return train, val, val_wnids


def write_tree(root, train, val, val_wnids):
    for w, files in train.items():
        for name, data in files.items():
            (root / "train" / w).mkdir(parents=True, exist_ok=True)
            (root / "train" / w / name).write_bytes(data)
    (root / "val").mkdir()
    for name, data in val.items():
        (root / "val" / name).write_bytes(data)
    for name, data in devkit_files(val_wnids, root.parent).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def report(out):
    return [line.split("\t") for line in (out / "report.tsv").read_text().splitlines()[1:]]


def test_archives_read_in_place_give_the_same_store_as_the_unpacked_tree(tmp_path):
    arch = tmp_path / "archives"
    write_tree(tmp_path / "tree", *write_archives(arch))
    before = sorted((p.name, p.stat().st_size) for p in arch.iterdir())
    prepare(str(tmp_path / "tree"), tmp_path / "from-tree", PrepareOptions(workers=1, progress=False))
    # several chunks over two processes: tasks carry their members to workers that pread the archive
    prepare(str(arch), tmp_path / "from-tars", PrepareOptions(workers=2, chunk=3, progress=False))
    assert sorted((p.name, p.stat().st_size) for p in arch.iterdir()) == before  # nothing unpacked beside them
    a, b = open_dataset(tmp_path / "from-tree"), open_dataset(tmp_path / "from-tars")
    assert list(a) == list(b) == ["train", "val"]
    for split in a:
        x, y = a[split], b[split]
        assert len(x) == len(y) > 0 and np.array_equal(x.images[:], y.images[:]) and np.array_equal(x.labels, y.labels)
        for key in ("class_ids", "class_names", "class_descriptions", "counts_per_class", "stats", "size"):
            assert x.manifest[key] == y.manifest[key], (split, key)
    assert b["val"].labels.tolist() == [2, 0, 1, 2, 1]  # the devkit's ids mapped to sorted-wnid indices
    assert b["train"].manifest["class_ids"] == SORTED_WNIDS and b["train"].class_names == ["tench", "goldfish", "kit fox"]
    assert np.bincount(b["train"].labels).tolist() == [3, 6, 3]  # CMYK, gray and the PNG named .JPEG all kept
    bad = f"{SORTED_WNIDS[1]}_bad.JPEG"
    assert [(s, p.rsplit("/", 1)[-1]) for s, p, _ in report(tmp_path / "from-tree")] == [("train", bad)]
    [(split, where, reason)] = report(tmp_path / "from-tars")
    assert where == f"{arch / 'ILSVRC2012_img_train.tar'}:{SORTED_WNIDS[1]}.tar:{bad}"
    assert (split, reason) == ("train", report(tmp_path / "from-tree")[0][2]) and "truncated" in reason
    assert b["val"].manifest["source"]["val_layout"] == "archive+devkit"


@pytest.mark.parametrize("which, splits, line", [
    (("train",), ["train"], "lacks ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz: train split only, class names are the wnids"),
    (("train", "devkit"), ["train"], "lacks ILSVRC2012_img_val.tar: train split only"),
    (("train", "val"), ["train"], "lacks ILSVRC2012_devkit_t12.tar.gz (or --devkit), which labels ILSVRC2012_img_val.tar: train split only, class names are the wnids"),
    (("val", "devkit"), ["val"], "lacks ILSVRC2012_img_train.tar: val split only"),
    (("val",), None, "lacks ILSVRC2012_img_train.tar, and ILSVRC2012_img_val.tar cannot be labelled without ILSVRC2012_devkit_t12.tar.gz (or --devkit): nothing to prepare"),
    (("devkit",), None, "holds ILSVRC2012_devkit_t12.tar.gz but neither ILSVRC2012_img_train.tar nor ILSVRC2012_img_val.tar: nothing to prepare"),
])  # fmt: skip
def test_a_missing_archive_is_one_line(tmp_path, capsys, which, splits, line):
    arch = tmp_path / "archives"
    write_archives(arch, which)
    rc = main(["prepare", str(arch), str(tmp_path / "out"), "--workers", "1", "--no-progress"])
    out, err = capsys.readouterr()
    if splits is None:
        assert rc == 2 and err == f"alexnet prepare: error: {arch} {line}\n" and not (tmp_path / "out" / "dataset.json").exists()
        return
    assert rc == 0 and out.splitlines()[-1] == f"{arch} {line}"
    ds = open_dataset(tmp_path / "out")
    assert list(ds) == splits and ds[splits[0]].manifest["class_ids"] == SORTED_WNIDS
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["missing"] == f"{arch} {line}"
    if splits == ["val"]:
        assert ds["val"].labels.tolist() == [2, 0, 1, 2, 1]


def test_val_fraction_draws_the_same_images_from_the_train_tar_as_from_the_tree(tmp_path):
    train, _, _ = write_archives(tmp_path / "archives", ("train",))
    for w, files in train.items():
        for name, data in files.items():
            (tmp_path / "tree" / "train" / w).mkdir(parents=True, exist_ok=True)
            (tmp_path / "tree" / "train" / w / name).write_bytes(data)
    opts = PrepareOptions(val_fraction=0.34, seed=3, workers=1, progress=False)
    a = prepare(str(tmp_path / "tree"), tmp_path / "a", opts)
    b = prepare(str(tmp_path / "archives"), tmp_path / "b", opts)
    assert list(a["splits"]) == list(b["splits"]) == ["train", "val"] and a["skipped"] == b["skipped"] == 1
    for split in ("train", "val"):
        x, y = open_store(tmp_path / "a" / split), open_store(tmp_path / "b" / split)
        assert np.array_equal(x.images[:], y.images[:]) and np.array_equal(x.labels, y.labels)


def test_an_unpacked_devkit_stands_in_for_the_tar_gz(tmp_path):
    arch = tmp_path / "archives"
    _, _, val_wnids = write_archives(arch, ("train", "val"))
    kit = tmp_path / "kit"
    for name, data in devkit_files(val_wnids, tmp_path).items():
        (kit / name).parent.mkdir(parents=True, exist_ok=True)
        (kit / name).write_bytes(data)
    r = prepare(str(arch), tmp_path / "out", PrepareOptions(devkit=str(kit / "ILSVRC2012_devkit_t12"), workers=1, progress=False))
    assert "missing" not in r and open_dataset(tmp_path / "out")["val"].labels.tolist() == [2, 0, 1, 2, 1]


def test_damaged_or_misnamed_archives_are_one_clear_error(tmp_path):
    arch = tmp_path / "archives"
    write_archives(arch, ("train",))
    train = arch / "ILSVRC2012_img_train.tar"
    data = train.read_bytes()
    with pytest.raises(DataError, match="give the folder that holds ImageNet's archives"):
        resolve_source(str(train))
    train.write_bytes(data[: len(data) // 2])  # a download cut short
    with pytest.raises(DataError, match=r"ILSVRC2012_img_train.tar is cut short: n\d+.tar ends \d+ bytes beyond the end of the file"):
        resolve_source(str(arch))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        first = tar.getmembers()[0]
    with tarfile.open(fileobj=io.BytesIO(data[first.offset_data : first.offset_data + first.size])) as tar:
        second = tar.getmembers()[1]
    damaged = bytearray(data)
    damaged[first.offset_data + second.offset + 3] ^= 0xFF  # the second header of an inner tar: its checksum fails
    train.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match="damaged tar header"):
        resolve_source(str(arch))
    train.write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match="is compressed"):
        resolve_source(str(arch))
    train.write_bytes(tar_bytes({"n01440764.tar": tar_bytes({"a.JPEG": b"x"}), "README.txt": b"hi"}))
    with pytest.raises(DataError, match="holds README.txt, not a <wnid>.tar"):
        resolve_source(str(arch))
    train.write_bytes(tar_bytes({"n01440764.tar": tar_bytes({"notes.txt": b"x"})}))
    with pytest.raises(DataError, match="n01440764.tar has no images"):
        resolve_source(str(arch))
