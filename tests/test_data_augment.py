"""Property tests for the batch augmentations (PAPER.md section 4), through the training transform
that composes them; and the ops' own random streams (adding, removing or moving one leaves the
others' draws alone)."""

import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.config import DataConfig, load_config
from alexnet.data.augment import (Flip, Lighting, Op, RandomCrop, apply_crops, center_crop, crop_offsets, flip_coins,
                                  op_seed, ten_crop, train_ops)
from alexnet.data.stats import StatsAccumulator
from alexnet.errors import ConfigError
from alexnet.preprocess import Preprocess, TrainTransform


def batch(b=6, c=3, s=12, channels_last=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, s, s, c), generator=g, dtype=torch.uint8)
    return x.permute(0, 3, 1, 2) if channels_last else x.permute(0, 3, 1, 2).contiguous()


def stats_of(x):
    acc = StatsAccumulator(x.shape[-1], x.shape[1])
    acc.add(x.permute(0, 2, 3, 1).numpy())
    return acc.finalize()


def crops_only(size, crop, channels=3, pad=0, flip=True, lighting=0.0, stats=None):
    """The training transform with nothing but its random crop and flip (and lighting when asked)."""
    ops = [RandomCrop(crop, pad)] + [Flip()] * flip
    if lighting:
        ops.append(Lighting(lighting, torch.tensor(stats.eigvals).float(), torch.tensor(stats.eigvecs).float()))
    return TrainTransform(Preprocess.raw(channels, size, min(crop, size)), tuple(ops))


def random_crop_flip(x, crop, step, pad=0, flip=True):
    return crops_only(x.shape[-1], crop, x.shape[1], pad=pad, flip=flip)(x, 0, step)


def all_crops(img, crop):
    """Every crop x crop window of one (C, H, W) image and its mirror."""
    h, w = img.shape[-2:]
    out = []
    for i in range(h - crop + 1):
        for j in range(w - crop + 1):
            v = img[:, i : i + crop, j : j + crop]
            out += [v, v.flip(-1)]
    return out


@pytest.mark.parametrize("channels_last", [True, False])
def test_random_crop_flip_is_a_window_or_its_mirror(channels_last):
    x = batch(channels_last=channels_last)
    y = random_crop_flip(x, 8, step=1)
    assert y.shape == (6, 3, 8, 8) and y.dtype == torch.float32
    for k in range(len(x)):
        assert any(torch.equal(y[k], c.float()) for c in all_crops(x[k], 8))


def test_flip_only_when_crop_is_full_size():
    x = batch()
    y = random_crop_flip(x, 12, step=3)
    flipped = [not torch.equal(y[k], x[k].float()) for k in range(len(x))]
    for k in range(len(x)):
        assert torch.equal(y[k], (x[k].flip(-1) if flipped[k] else x[k]).float())
    assert 0 < sum(flipped) < len(x)  # both outcomes occur for this seed
    assert torch.equal(random_crop_flip(x, 12, step=3, flip=False), x.float())


def test_padding_crop_keeps_size_and_reflects():
    x = batch(s=8)
    y = random_crop_flip(x, 8, step=0, pad=2)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for k in range(len(x)):
        assert any(torch.equal(y[k], c.float()) for c in all_crops(padded[k], 8))


def test_center_crop_and_ten_crop_cover_corners_and_center():
    x = batch(s=10)
    c = center_crop(x, 6)
    assert torch.equal(c, x[..., 2:8, 2:8])
    t = ten_crop(x, 6)
    assert t.shape == (6, 10, 3, 6, 6)
    assert torch.equal(t[:, 0], x[..., :6, :6]) and torch.equal(t[:, 1], x[..., :6, 4:])
    assert torch.equal(t[:, 2], x[..., 4:, :6]) and torch.equal(t[:, 3], x[..., 4:, 4:])
    assert torch.equal(t[:, 4], c)
    assert torch.equal(t[:, 5:], t[:, :5].flip(-1))
    # the four corners of the image are each in exactly their corner crop (and its mirror)
    assert t[:, 0, :, 0, 0].equal(x[..., 0, 0]) and t[:, 3, :, -1, -1].equal(x[..., -1, -1])


def test_pca_lighting_adds_one_rgb_offset_along_the_pca_basis():
    x = batch(b=5, s=8)
    st = stats_of(batch(b=32, s=8, seed=9))
    y = crops_only(8, 8, lighting=0.1, flip=False, stats=st)(x, 0, 4)
    assert y.dtype == torch.float32
    diff = (y - x.float()).double()
    offsets = diff[:, :, 0, 0]
    assert torch.allclose(diff, offsets[:, :, None, None].expand_as(diff), atol=1e-4)  # same offset at every pixel
    # offset = eigvecs @ (alpha * sqrt(eigvals)): coordinates in the basis are alpha * sqrt(lambda)
    coords = offsets.numpy() @ st.eigvecs
    alpha = coords / np.sqrt(st.eigvals)
    g = torch.Generator().manual_seed(op_seed(0, 4, "lighting"))  # the lighting op's own generator at step 4
    expected = (torch.randn(5, 3, generator=g) * 0.1).double().numpy()
    np.testing.assert_allclose(alpha, expected, rtol=1e-3, atol=1e-5)
    assert not torch.equal(offsets[0], offsets[1])  # drawn per image


def test_statistics_match_numpy():
    x = batch(b=20, s=6, seed=4).permute(0, 2, 3, 1).numpy()
    acc1, acc2 = StatsAccumulator(6, 3), StatsAccumulator(6, 3)
    acc1.add(x[:7])
    acc2.add(x[7:])
    acc1.merge(acc2)  # partial sums (workers, resumed runs) add up to one pass
    st = acc1.finalize()
    pixels = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(st.mean_image, x.mean(0), rtol=1e-6)
    np.testing.assert_allclose(st.channel_mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.channel_std, pixels.std(0), rtol=1e-9)
    cov = np.cov(pixels, rowvar=False, bias=True)
    np.testing.assert_allclose(st.eigvecs @ np.diag(st.eigvals) @ st.eigvecs.T, cov, rtol=1e-9, atol=1e-6)
    assert np.all(np.diff(st.eigvals) <= 0)
    np.testing.assert_allclose(st.eigvecs.T @ st.eigvecs, np.eye(3), atol=1e-12)


@dataclass
class FakeStore:
    """What the ops read from a store."""

    stats: object
    channels: int
    size: int


def store_of(x):
    return FakeStore(stats_of(x), x.shape[1], x.shape[-1])


@dataclass(frozen=True, eq=False)
class Noise(Op):
    """A stand-in for a new op: as many draws as there are pixels, from its own generator (and then
    nothing done with them, so that the batch's output must stay as it was)."""

    name = "noise"
    keys = ()

    def __call__(self, batch, generator):
        torch.randn(batch.images.shape, generator=generator, device=generator.device)
        return batch


def transform(x, ops=None, **cfg):
    """The training transform a run with DataConfig(**cfg) builds for a store of x (or the given ops)."""
    store = store_of(x)
    built = TrainTransform.for_training(store, DataConfig(mean="none", **cfg))
    return built if ops is None else replace(built, ops=tuple(ops))


def geometry(t, x, step=7, seed=3):
    """What the ops decided for batch x: each crop's window and mirror, and the colour offset."""
    b = t.draw(x, seed, step)
    return b.top, b.left, b.flips, b.offset


def test_crops_and_flips_are_bit_identical_with_and_without_the_lighting_op():
    x = batch(b=32)
    lit, plain = transform(x, crop=8, pad=2, lighting=0.1), transform(x, crop=8, pad=2, lighting=0.0)
    assert [op.name for op in lit.ops] == ["crop", "flip", "lighting"]
    assert [op.name for op in plain.ops] == ["crop", "flip"]
    for a, b in zip(geometry(lit, x)[:3], geometry(plain, x)[:3]):
        assert torch.equal(a, b)
    crops_lit, _ = lit.draw(x, 3, 7).cut()
    crops_plain, _ = plain.draw(x, 3, 7).cut()
    assert torch.equal(crops_lit, crops_plain)
    diff = lit(x, 3, 7) - plain(x, 3, 7)  # lighting adds one RGB offset per image, nothing else
    torch.testing.assert_close(diff, geometry(lit, x)[3][:, :, None, None].expand_as(diff))
    assert diff.abs().amax() > 0


def test_adding_or_moving_an_op_leaves_the_other_ops_draws_unchanged():
    x = batch(b=32)
    t = transform(x, crop=8, pad=2, lighting=0.1)
    before = geometry(t, x)
    crop, flip, lighting = t.ops
    for ops in ([Noise(), crop, flip, lighting], [crop, flip, Noise(), lighting], [lighting, flip, crop]):
        after = geometry(replace(t, ops=tuple(ops)), x)
        for a, b in zip(before, after):
            assert torch.equal(a, b), [op.name for op in ops]
    assert torch.equal(replace(t, ops=(crop, Noise(), flip, lighting))(x, 3, 7), t(x, 3, 7))  # the whole output
    # without the crop op, the flips and the lighting stay as they were
    assert all(torch.equal(a, b) for a, b in zip(geometry(replace(t, ops=(flip, lighting)), x)[2:], before[2:]))


def test_the_same_seed_and_step_give_the_same_batch_in_every_process(tmp_path):
    x = batch(b=16)
    t = transform(x, crop=8, pad=2, lighting=0.1)
    here = t(x, 5, 11)
    assert torch.equal(here, t(x, 5, 11))
    assert not torch.equal(here, t(x, 5, 12)) and not torch.equal(here, t(x, 6, 11))
    # another interpreter (another string-hash salt): the draws must not depend on anything but (seed, step)
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import test_data_augment as m; x = m.batch(b=16); "
            "t = m.transform(x, crop=8, pad=2, lighting=0.1); torch.save(t(x, 5, 11), sys.argv[2])")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path / "there.pt")],
                   env=env, check=True)  # fmt: skip
    assert torch.equal(here, torch.load(tmp_path / "there.pt"))


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_pad_mode_is_a_config_key_and_reaches_the_padding(mode):
    cfg = load_config("cifar10", overrides=[f"data.pad_mode={mode}"]).data
    assert cfg.pad == 4 and cfg.pad_mode == mode and DataConfig().pad_mode == "reflect"
    x = batch(b=24, s=8)
    t = transform(x, crop=8, pad=3, pad_mode=mode, flip=False, lighting=0.0)
    y = t(x, 0, 1)
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3), mode="reflect" if mode == "reflect" else "constant")
    for k in range(len(x)):
        assert any(torch.equal(y[k], c.float()) for c in all_crops(padded[k], 8))
    # a crop past the edge holds black pixels only when zero-padded
    assert (y == 0).all(dim=1).any() == (mode == "zeros")


def test_the_config_turns_ops_on_and_off_and_bad_values_name_their_key():
    x = batch(b=4, s=8)
    assert [op.name for op in train_ops(DataConfig(crop=8, flip=False, lighting=0.0), store_of(x))] == ["crop"]
    grey = store_of(batch(b=4, s=8, c=1))
    assert [op.name for op in train_ops(DataConfig(crop=8, lighting=0.1), grey)] == ["crop", "flip"]  # lighting is RGB
    bad_values = (({"pad_mode": "zero"}, "data.pad_mode"), ({"pad": -1}, "data.pad"),
                  ({"lighting": -0.1}, "data.lighting"), ({"crop": 13}, "data.crop"))  # fmt: skip
    for bad, key in bad_values:
        with pytest.raises(ConfigError, match=key):
            train_ops(DataConfig(**{"crop": 8, **bad}), store_of(x))
    with pytest.raises(AssertionError, match="nope"):

        class Typo(Op):  # an op naming a key DataConfig lacks fails where it is defined
            name, keys = "typo", ("nope",)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_crops_match_cpu():
    x = batch(b=16, s=12)
    g = torch.Generator().manual_seed(0)
    top, left = crop_offsets(16, 12, 12, 8, g)
    flips = flip_coins(16, g)
    assert torch.equal(apply_crops(x, top, left, flips, 8), apply_crops(x.cuda(), top, left, flips, 8).cpu())
