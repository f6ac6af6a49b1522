"""Property tests for the batch augmentations (PAPER.md section 4) and the configured transforms."""

import numpy as np
import pytest
import torch

from alexnet.data.augment import (EvalTransform, TrainTransform, center_crop, pca_lighting, random_crop_flip,
                                  subtract_mean, ten_crop)  # fmt: skip
from alexnet.data.stats import StatsAccumulator
from alexnet.errors import ConfigError


def batch(b=6, c=3, s=12, channels_last=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, s, s, c), generator=g, dtype=torch.uint8)
    return x.permute(0, 3, 1, 2) if channels_last else x.permute(0, 3, 1, 2).contiguous()


def stats_of(x):
    acc = StatsAccumulator(x.shape[-1], x.shape[1])
    acc.add(x.permute(0, 2, 3, 1).numpy())
    return acc.finalize()


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
    assert y.shape == (6, 3, 8, 8) and y.dtype == torch.uint8
    for k in range(len(x)):
        assert any(torch.equal(y[k], c) for c in all_crops(x[k], 8))


def test_flip_only_when_crop_is_full_size():
    x = batch()
    y = random_crop_flip(x, 12, torch.Generator().manual_seed(3))
    flipped = [not torch.equal(y[k], x[k]) for k in range(len(x))]
    for k in range(len(x)):
        assert torch.equal(y[k], x[k].flip(-1) if flipped[k] else x[k])
    assert 0 < sum(flipped) < len(x)  # both outcomes occur for this seed
    assert torch.equal(random_crop_flip(x, 12, torch.Generator().manual_seed(3), flip=False), x)


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
        assert any(torch.equal(y[k], c) for c in all_crops(padded[k], 8))


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
    y = pca_lighting(x, st.eigvals, st.eigvecs, 0.1, torch.Generator().manual_seed(0))
    assert y.dtype == torch.float32
    diff = (y - x.float()).double()
    offsets = diff[:, :, 0, 0]
    assert torch.allclose(diff, offsets[:, :, None, None].expand_as(diff), atol=1e-4)  # same offset at every pixel
    # offset = eigvecs @ (alpha * sqrt(eigvals)): coordinates in the basis are alpha * sqrt(lambda)
    coords = offsets.numpy() @ st.eigvecs
    alpha = coords / np.sqrt(st.eigvals)
    g = torch.Generator().manual_seed(0)
    expected = (torch.randn(5, 3, generator=g) * 0.1).double().numpy()
    np.testing.assert_allclose(alpha, expected, rtol=1e-3, atol=1e-5)
    assert not torch.equal(offsets[0], offsets[1])  # drawn per image


def test_subtract_mean_channel_and_image_center_cropped():
    x = batch(s=8)
    mean = torch.tensor([10.0, 20.0, 30.0])
    assert torch.allclose(subtract_mean(x, mean), x.float() - mean[:, None, None])
    big = torch.arange(3 * 12 * 12, dtype=torch.float32).reshape(3, 12, 12)
    assert torch.allclose(subtract_mean(x, big), x.float() - big[:, 2:10, 2:10])


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


@pytest.mark.parametrize("mean", ["image", "channel", "none"])
def test_train_transform_equals_its_parts(mean):
    x = batch(b=4, s=12)
    st = stats_of(x)
    tt = TrainTransform(st, crop=8, mean=mean, lighting=0.1, divide_std=True)
    y = tt(x, torch.Generator().manual_seed(2))
    assert y.shape == (4, 3, 8, 8) and y.dtype == torch.float32
    # the same draws, step by step
    g = torch.Generator().manual_seed(2)
    from alexnet.data.augment import apply_crops, crop_params, lighting_offsets

    top, left, flips = crop_params(4, 12, 12, 8, g)
    crops = apply_crops(x, top, left, flips, 8).float()
    off = lighting_offsets(4, torch.tensor(st.eigvals).float(), torch.tensor(st.eigvecs).float(), 0.1, g)
    ref = crops + off[:, :, None, None]
    if mean == "channel":
        ref = ref - torch.tensor(st.channel_mean).float()[:, None, None]
    if mean == "image":
        m = torch.tensor(st.mean_image).permute(2, 0, 1)[None].expand(4, -1, -1, -1)
        ref = ref - apply_crops(m, top, left, flips, 8)
    ref = ref / torch.tensor(st.channel_std).float()[:, None, None]
    assert torch.allclose(y, ref, atol=1e-4)


def test_eval_transform_center_ten_and_flips():
    x = batch(b=3, s=12)
    st = stats_of(x)
    ev = EvalTransform(st, crop=8, mean="image")
    m = torch.tensor(st.mean_image).permute(2, 0, 1)
    assert torch.allclose(ev(x), x[..., 2:10, 2:10].float() - m[:, 2:10, 2:10], atol=1e-5)
    t = ev.ten_crop(x)
    assert t.shape == (3, 10, 3, 8, 8)
    assert torch.allclose(t[:, 0], x[..., :8, :8].float() - m[:, :8, :8], atol=1e-5)
    assert torch.allclose(t[:, 4], ev(x), atol=1e-5)
    assert torch.allclose(ev.flips(x)[:, 1], ev(x).flip(-1))
    assert EvalTransform(st, crop=8, mean="none", dtype=torch.bfloat16)(x).dtype == torch.bfloat16


def test_transform_config_errors_name_the_value():
    st = stats_of(batch(s=8))
    with pytest.raises(ConfigError, match="mean"):
        TrainTransform(st, crop=8, mean="median")
    with pytest.raises(ConfigError, match="crop 9"):
        TrainTransform(st, crop=9)
    with pytest.raises(ConfigError, match="divide_std"):
        EvalTransform(st, crop=8, divide_std=1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_crops_match_cpu():
    x = batch(b=16, s=12)
    g = torch.Generator().manual_seed(0)
    top, left, flips = __import__("alexnet.data.augment", fromlist=["crop_params"]).crop_params(16, 12, 12, 8, g)
    from alexnet.data.augment import apply_crops

    assert torch.equal(apply_crops(x, top, left, flips, 8), apply_crops(x.cuda(), top, left, flips, 8).cpu())
