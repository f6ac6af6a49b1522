"""Caffe's bvlc_alexnet as converted to `bvlc_alexnet.npy` (caffe-tensorflow), in and out.

The file (PAPER.md, "Known reference numbers") is a NumPy .npy holding one pickled object:
a dict layer -> [W, b] (later caffe-tensorflow versions: layer -> {"weights", "biases"}),

    conv1 (11, 11, 3, 96)   conv2 (5, 5, 48, 256)   conv3 (3, 3, 256, 384)
    conv4 (3, 3, 192, 384)  conv5 (3, 3, 192, 256)  conv weights HWIO, grouped halves
    fc6 (9216, 4096)  fc7 (4096, 4096)  fc8 (4096, 1000)       fc weights [in, out]

The network is Caffe's deploy.prototxt: 227x227 BGR input minus the ImageNet mean, conv1
11x11/4 with no padding (55x55), ReLU, LRN, 3x3/2 max-pool, conv2 5x5 pad 2 in two groups,
ReLU, LRN, pool, conv3 pad 1, conv4 and conv5 pad 1 in two groups, pool, fc6, fc7, fc8.
That is the paper's order (LRN before pool), so it loads into the grouped `alexnet`:

- grouped convs: caffe-tensorflow splits input and kernel into halves along channels, the
  first half of the kernel's outputs seeing the first half of the inputs, which is exactly
  torch's groups=2 weight (out, in/2, kh, kw), so a conv weight is W.transpose(3, 2, 0, 1);
- fc6: the converter reordered its rows from Caffe's (C, H, W) flattening to TensorFlow's
  (H, W, C) (kaffe DataReshaper), so rows are undone with reshape(6, 6, 256, out);
- LRN: Caffe local_size 5, alpha 1e-4 divided by the size (2e-5 per squared term, the
  TensorFlow port's `alpha=2e-05, depth_radius=2`), beta 0.75, k 1 (Caffe's default; the
  port writes bias=1.0): our `lrn_convention="per-term", lrn_alpha=1e-4, lrn_k=1.0`;
- input 227: the model's conv1 then needs no padding, so outputs match Caffe's exactly.
  (The hand-written TF port myalexnet_forward.py runs conv1 with padding="SAME", 57x57 maps,
  which is not the network the weights were trained in; we follow Caffe.)
- preprocessing: Caffe resized to 256, cropped 227, kept 0-255 values in BGR order and
  subtracted the mean image; `preprocess.CAFFE_BVLC` records the per-channel mean of Caffe's
  ilsvrc_2012_mean, the form Caffe's own classification example uses.

Loading never runs pickled code: np.load(allow_pickle=True) would execute whatever the
pickle names, so the .npy header is parsed with numpy's header reader and the payload with
an Unpickler that resolves only NumPy's array-reconstruction globals; dicts, lists, tuples
and strings are built by pickle opcodes and need no globals at all.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError
from ..files import atomic_open, load_array_pickle

# create_model("alexnet", **BVLC_MODEL_OPTIONS) is the bvlc_alexnet network.
BVLC_MODEL_OPTIONS: dict[str, Any] = dict(
    input_size=227, lrn_convention="per-term", lrn_size=5, lrn_alpha=1e-4, lrn_beta=0.75, lrn_k=1.0
)
CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC_LAYERS = ("fc6", "fc7", "fc8")
# Weight shapes in the file; None: any size (fc8's classes).
BVLC_SHAPES: dict[str, tuple[int | None, ...]] = {
    "conv1": (11, 11, 3, 96), "conv2": (5, 5, 48, 256), "conv3": (3, 3, 256, 384), "conv4": (3, 3, 192, 384),
    "conv5": (3, 3, 192, 256), "fc6": (9216, 4096), "fc7": (4096, 4096), "fc8": (4096, None),
}  # fmt: skip
POOL5 = (256, 6, 6)  # (C, H, W) of the maps fc6 reads


# --------------------------------------------------------------------------- safe .npy reading
def load_npy_object(path: str | os.PathLike[str]) -> Any:
    """The object a pickled .npy holds, unpickled without running code (arrays, dicts, lists only).

    A plain numeric .npy is returned as its array (no pickle involved). Anything that names a
    global other than NumPy's array reconstruction is a CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as exc:
            raise CheckpointError(f"{path} is not a readable .npy file: {exc}") from None
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        try:
            # latin1: Python 2 pickles store array bytes as str, which numpy turns back into bytes.
            obj = load_array_pickle(f, encoding="latin1")
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"{path}: unsafe or corrupt pickle, not loaded ({exc})") from None
        except Exception as exc:  # truncated data, bad opcodes, shape/data mismatch
            raise CheckpointError(f"{path}: corrupt pickled .npy ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        obj = obj.item()  # np.save(dict) stores the dict in a 0-d object array
    return obj


def save_npy_object(obj: Any, path: str | os.PathLike[str]) -> Path:
    """np.save a Python object (a dict of arrays) as a pickled .npy, the caffe-tensorflow way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = np.empty((), dtype=object)
    holder[()] = obj
    with atomic_open(path) as f:
        np.save(f, holder, allow_pickle=True)
    return path


# --------------------------------------------------------------------------- layout conversion
def _weights_biases(params: Mapping[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    if name not in params:
        raise CheckpointError(f"bvlc_alexnet file has no layer {name!r} (found: {', '.join(map(str, params))})")
    entry = params[name]
    if isinstance(entry, Mapping):
        entry = (entry.get("weights"), entry.get("biases"))
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise CheckpointError(f"layer {name}: expected [weights, biases], got {type(entry).__name__}")
    w, b = entry
    for what, a in (("weights", w), ("biases", b)):
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            raise CheckpointError(f"layer {name}: {what} must be a float array, got {type(a).__name__}")
    expected = BVLC_SHAPES[name]
    if w.ndim != len(expected) or any(e is not None and e != s for e, s in zip(expected, w.shape)):
        raise CheckpointError(f"layer {name}: weights have shape {w.shape}, expected {expected}")
    b = b.reshape(-1)  # old Caffe blobs keep biases as (1, 1, 1, n)
    if b.shape[0] != w.shape[-1]:
        raise CheckpointError(f"layer {name}: {b.shape[0]} biases for {w.shape[-1]} outputs")
    return w, b


def bvlc_to_state_dict(params: Mapping[str, Any]) -> dict[str, Tensor]:
    """caffe-tensorflow layer dict -> state_dict of create_model("alexnet", **BVLC_MODEL_OPTIONS)."""
    if not isinstance(params, Mapping):
        raise CheckpointError(f"expected a dict of layers, got {type(params).__name__}")
    sd: dict[str, Tensor] = {}
    for name in CONV_LAYERS:
        w, b = _weights_biases(params, name)
        sd[f"features.{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1), np.float32))
        sd[f"features.{name}.bias"] = torch.from_numpy(b.astype(np.float32))
    for name in FC_LAYERS:
        w, b = _weights_biases(params, name)
        if name == "fc6":  # rows are (h, w, c); ours flatten (c, h, w)
            c, h, wd = POOL5
            w = w.reshape(h, wd, c, -1).transpose(3, 2, 0, 1).reshape(-1, c * h * wd)
        else:
            w = w.T
        sd[f"classifier.{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w, np.float32))
        sd[f"classifier.{name}.bias"] = torch.from_numpy(b.astype(np.float32))
    return sd


def state_dict_to_bvlc(sd: Mapping[str, Tensor]) -> dict[str, list[np.ndarray]]:
    """The inverse: a grouped `alexnet` state_dict -> caffe-tensorflow layer dict (layer -> [W, b])."""
    params: dict[str, list[np.ndarray]] = {}
    for name in CONV_LAYERS + FC_LAYERS:
        prefix = "features" if name.startswith("conv") else "classifier"
        try:
            w = sd[f"{prefix}.{name}.weight"].detach().cpu().float().numpy()
            b = sd[f"{prefix}.{name}.bias"].detach().cpu().float().numpy()
        except KeyError:
            raise CheckpointError(f"not a paper-layout model: no {prefix}.{name} weights") from None
        if name.startswith("conv"):
            w = w.transpose(2, 3, 1, 0)
        elif name == "fc6":
            c, h, wd = POOL5
            if w.shape[1] != c * h * wd:
                raise CheckpointError(f"fc6 reads {w.shape[1]} values, the bvlc layout needs {c * h * wd}")
            w = w.reshape(-1, c, h, wd).transpose(2, 3, 1, 0).reshape(c * h * wd, -1)
        else:
            w = w.T
        params[name] = [np.ascontiguousarray(w), np.ascontiguousarray(b)]
        _weights_biases(params, name)  # same shape checks as on the way in
    return params


def load_bvlc_npy(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a bvlc_alexnet.npy safely and convert it to our grouped `alexnet` state_dict."""
    obj = load_npy_object(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a dict of layers (got {type(obj).__name__})")
    return bvlc_to_state_dict(obj)
