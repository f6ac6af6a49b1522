"""ImageNet with the official devkit: data/meta.mat (MATLAB, read with scipy) and a flat val/ with its ground truth."""

import numpy as np
import pytest
import scipy.io
from PIL import Image

from alexnet.data import open_dataset, resolve_source
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
