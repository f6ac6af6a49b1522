"""Caffe's bvlc_alexnet.npy: safe loading, layout conversion, and equality with the file's own network."""

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet.checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of
from alexnet.cli import main
from alexnet.errors import CheckpointError
from alexnet.interop.caffe import (
    BVLC_MODEL_OPTIONS,
    BVLC_SHAPES,
    bvlc_to_state_dict,
    load_npy_object,
    save_npy_object,
)
from alexnet.inference import Predictor
from alexnet.models import create_model
from alexnet.preprocess import CAFFE_BVLC


def fake_bvlc(num_classes: int = 1000, seed: int = 0) -> dict:
    """A dict in bvlc_alexnet.npy's layout with He-scaled random weights (logits of order 1-10)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in BVLC_SHAPES.items():
        shape = tuple(num_classes if s is None else s for s in shape)
        fan_in = int(np.prod(shape[:-1]))
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        b = rng.standard_normal(shape[-1], dtype=np.float32) * np.float32(0.1)
        params[name] = [w, b]
    params["conv1"][0] /= 60.0  # inputs are 0-255 minus the mean, not unit scale
    return params


# ---------------------------------------------------------------- a direct implementation of the file's network
# NHWC activations and HWIO kernels exactly as the file stores them, as the TensorFlow port
# computes them (grouped convs by splitting channels), with Caffe's geometry: conv1 11x11/4 with
# no padding on 227, "SAME"-equivalent padding 2 / 1 on conv2-5, 3x3/2 valid pooling,
# LRN b = a / (1 + 2e-5 * sum of 5 squares) ** 0.75, fc6 reading the NHWC flattening.
def ref_conv(x, w, b, stride, pad, groups=1):
    x = F.pad(x, (0, 0, pad, pad, pad, pad))  # NHWC: pad W and H
    kh, kw = w.shape[:2]
    outs = []
    for xg, wg in zip(x.chunk(groups, dim=3), w.chunk(groups, dim=3)):
        p = xg.unfold(1, kh, stride).unfold(2, kw, stride)  # (N, OH, OW, C, KH, KW)
        outs.append(torch.einsum("nhwcij,ijco->nhwo", p, wg))
    return torch.cat(outs, 3) + b


def ref_lrn(x, radius=2, alpha=2e-5, beta=0.75, bias=1.0):
    sq = F.pad(x * x, (radius, radius))  # pad the channel (last) axis
    s = sum(sq[..., i : i + x.shape[-1]] for i in range(2 * radius + 1))
    return x / (bias + alpha * s) ** beta


def ref_pool(x):
    return x.unfold(1, 3, 2).unfold(2, 3, 2).amax(dim=(-1, -2))


def ref_bvlc_forward(params, x_nhwc):
    t = {k: [torch.from_numpy(a).double() for a in v] for k, v in params.items()}
    h = ref_pool(ref_lrn(F.relu(ref_conv(x_nhwc, *t["conv1"], 4, 0))))
    h = ref_pool(ref_lrn(F.relu(ref_conv(h, *t["conv2"], 1, 2, groups=2))))
    h = F.relu(ref_conv(h, *t["conv3"], 1, 1))
    h = F.relu(ref_conv(h, *t["conv4"], 1, 1, groups=2))
    h = ref_pool(F.relu(ref_conv(h, *t["conv5"], 1, 1, groups=2)))
    h = F.relu(h.reshape(h.shape[0], -1) @ t["fc6"][0] + t["fc6"][1])
    h = F.relu(h @ t["fc7"][0] + t["fc7"][1])
    return h @ t["fc8"][0] + t["fc8"][1]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(layer dict, its .npy, the checkpoint `alexnet import-weights` made from it)."""
    folder = tmp_path_factory.mktemp("bvlc")
    params = fake_bvlc()
    path = save_npy_object(params, folder / "bvlc_alexnet.npy")
    out = folder / "bvlc.pt"
    assert main(["import-weights", str(path), "--out", str(out)]) == 0
    return params, path, out


def test_import_equals_direct_implementation_of_the_file(imported):
    params, _, out = imported
    ckpt = load_checkpoint(out)
    assert ckpt["arch"] == "alexnet"
    assert {k: ckpt["model_config"][k] for k in BVLC_MODEL_OPTIONS} == BVLC_MODEL_OPTIONS
    model = model_from_checkpoint(ckpt).eval()

    # A mean-subtracted BGR 227x227 batch, as Caffe feeds it.
    rgb = torch.rand(2, 227, 227, 3, generator=torch.Generator().manual_seed(1)) * 255
    bgr = rgb.flip(-1) - torch.tensor(CAFFE_BVLC.mean)
    want = ref_bvlc_forward(params, bgr.double())
    with torch.no_grad():
        got = model(bgr.permute(0, 3, 1, 2).contiguous()).double()
    assert want.abs().max() > 1.0  # the comparison is not between two near-zero outputs
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert (got.argmax(1) == want.argmax(1)).all()


def test_checkpoint_records_caffe_preprocessing_and_imagenet_names(imported):
    ckpt = load_checkpoint(imported[2])
    pp = preprocess_of(ckpt)
    assert (pp.crop, pp.resize, pp.scale, pp.std, pp.channel_order) == (227, 256, 1.0, None, "BGR")
    assert pp.mean == pytest.approx((104.007, 116.669, 122.679), abs=1e-3)
    assert len(ckpt["class_names"]) == 1000 and ckpt["class_names"][0] == "tench"
    assert ckpt["meta"]["imported_from"]["format"] == "caffe-npy"
    assert len(ckpt["meta"]["imported_from"]["sha256"]) == 64


def test_predict_uses_the_recorded_caffe_preprocessing(imported, tmp_path):
    from PIL import Image

    out = imported[2]
    # 256x256 already: no resampling, so the expected input is exact (centre 227 crop, BGR, minus mean).
    img = np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    predictor = Predictor.load(out, device="cpu")
    (pred,) = predictor.predict([str(tmp_path / "x.png")], topk=3)
    o = (256 - 227) // 2
    x = torch.from_numpy(img[o : o + 227, o : o + 227, ::-1].astype(np.float32)) - torch.tensor(CAFFE_BVLC.mean)
    with torch.no_grad():
        probs = predictor.model(x.permute(2, 0, 1)[None].contiguous()).softmax(1)[0]
    names = load_checkpoint(out)["class_names"]
    top = probs.topk(3)
    assert [c for c, _ in pred.top] == [names[i] for i in top.indices.tolist()]
    assert [p for _, p in pred.top] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_round_trip_file_to_checkpoint_to_file(imported, tmp_path):
    params, _, out = imported
    rt = tmp_path / "rt.npy"
    assert main(["export", str(out), "--format", "caffe-npy", "--out", str(rt)]) == 0
    back = load_npy_object(rt)
    assert sorted(back) == sorted(params)
    for name, (w, b) in params.items():
        assert back[name][0].shape == w.shape and np.array_equal(back[name][0], w), name
        assert np.array_equal(back[name][1], b), name


def test_caffe_npy_export_refuses_other_lrn_constants(tmp_path):
    from alexnet.checkpoint import atomic_save, make_checkpoint

    ckpt = make_checkpoint(create_model("alexnet-small"))  # the refusal comes before any weights are read
    ckpt.update(arch="alexnet", model_config=dict(create_model("alexnet-small").config, lrn_k=2.0), state_dict={})
    atomic_save(ckpt, tmp_path / "paper.pt")
    assert main(["export", str(tmp_path / "paper.pt"), "--format", "caffe-npy", "--out", str(tmp_path / "x.npy")]) == 2
    assert not (tmp_path / "x.npy").exists()


def test_weights_biases_dict_form_and_protocol2_pickles(imported, tmp_path):
    params = imported[0]
    as_dicts = {k: {"weights": w, "biases": b} for k, (w, b) in params.items()}
    a, b = bvlc_to_state_dict(as_dicts), bvlc_to_state_dict(params)
    assert all(torch.equal(a[k], b[k]) for k in b)
    small = {"conv1": [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]}
    holder = np.empty((), dtype=object)
    holder[()] = small
    path = tmp_path / "p2.npy"
    with open(path, "wb") as f:  # a Python-3 protocol-2 pickle spells bytes with _codecs.encode
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(holder, f, protocol=2)
    got = load_npy_object(path)
    assert np.array_equal(got["conv1"][0], small["conv1"][0]) and got["conv1"][0].dtype == np.float32


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["system", "eval", "nested"])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    if payload == "eval":
        class _Eval:
            def __reduce__(self):
                return (eval, (f"open({str(marker)!r}, 'w').close()",))
        evil = _Eval()
    obj = {"conv1": [evil, np.zeros(96, np.float32)]} if payload == "nested" else evil
    path = tmp_path / "evil.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(obj, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to load global"):
        load_npy_object(path)
    assert main(["import-weights", str(path), "--out", str(tmp_path / "x.pt")]) == 2  # one line, exit 2
    assert not marker.exists()
    assert not (tmp_path / "x.pt").exists()


def test_wrong_shapes_and_missing_layers_are_named(imported, tmp_path):
    params = {k: list(v) for k, v in imported[0].items()}
    params["conv4"][0] = params["conv4"][0][:, :, :96]  # an ungrouped-width conv4 would be (3,3,384,384)
    with pytest.raises(CheckpointError, match="conv4"):
        bvlc_to_state_dict(params)
    del params["conv4"]
    with pytest.raises(CheckpointError, match="no layer 'conv4'"):
        bvlc_to_state_dict(params)
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(CheckpointError, match="not a readable .npy"):
        load_npy_object(tmp_path / "junk.npy")


def test_conv1_kernels_come_out_in_rgb_for_bgr_weights(imported):
    ckpt_path = imported[2]
    weight, towers = Predictor.load(ckpt_path, device="cpu").conv1()
    stored = load_checkpoint(ckpt_path)["state_dict"]["features.conv1.weight"]
    assert towers == 2 and torch.equal(weight, stored.flip(1))  # the file's channel 0 is blue
