"""Property tests for the batch augmentations (PAPER.md section 4), through the training transform that composes them."""

import numpy as np
import pytest
import torch

from alexnet.data.augment import apply_crops, center_crop, crop_params, ten_crop
from alexnet.data.stats import StatsAccumulator
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
    eigvals = torch.tensor(stats.eigvals).float() if stats is not None else torch.ones(channels)
    eigvecs = torch.tensor(stats.eigvecs).float() if stats is not None else torch.eye(channels)
    return TrainTransform(Preprocess.raw(channels, size, min(crop, size)), eigvals, eigvecs, crop=crop, pad=pad, flip=flip,
                          lighting=lighting)  # fmt: skip


def random_crop_flip(x, crop, g, pad=0, flip=True):
    return crops_only(x.shape[-1], crop, x.shape[1], pad=pad, flip=flip)(x, g)


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
    g = torch.Generator().manual_seed(1)
    y = random_crop_flip(x, 8, g)
    assert y.shape == (6, 3, 8, 8) and y.dtype == torch.float32
    for k in range(len(x)):
        assert any(torch.equal(y[k], c.float()) for c in all_crops(x[k], 8))


def test_flip_only_when_crop_is_full_size():
    x = batch()
    y = random_crop_flip(x, 12, torch.Generator().manual_seed(3))
    flipped = [not torch.equal(y[k], x[k].float()) for k in range(len(x))]
    for k in range(len(x)):
        assert torch.equal(y[k], (x[k].flip(-1) if flipped[k] else x[k]).float())
    assert 0 < sum(flipped) < len(x)  # both outcomes occur for this seed
    assert torch.equal(random_crop_flip(x, 12, torch.Generator().manual_seed(3), flip=False), x.float())


def test_random_crop_same_generator_state_same_result_and_both_flips_occur():
    x = batch(b=64)
    a = random_crop_flip(x, 8, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, 8, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_padding_crop_keeps_size_and_reflects():
    x = batch(s=8)
    y = random_crop_flip(x, 8, torch.Generator().manual_seed(0), pad=2)
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
    g = torch.Generator().manual_seed(0)
    crop_params(5, 8, 8, 8, g, flip=False)  # the transform draws the crops first, then the lighting
    y = crops_only(8, 8, lighting=0.1, flip=False, stats=st)(x, torch.Generator().manual_seed(0))
    assert y.dtype == torch.float32
    diff = (y - x.float()).double()
    offsets = diff[:, :, 0, 0]
    assert torch.allclose(diff, offsets[:, :, None, None].expand_as(diff), atol=1e-4)  # same offset at every pixel
    # offset = eigvecs @ (alpha * sqrt(eigvals)): coordinates in the basis are alpha * sqrt(lambda)
    coords = offsets.numpy() @ st.eigvecs
    alpha = coords / np.sqrt(st.eigvals)
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


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_crops_match_cpu():
    x = batch(b=16, s=12)
    g = torch.Generator().manual_seed(0)
    top, left, flips = __import__("alexnet.data.augment", fromlist=["crop_params"]).crop_params(16, 12, 12, 8, g)

    assert torch.equal(apply_crops(x, top, left, flips, 8), apply_crops(x.cuda(), top, left, flips, 8).cpu())
