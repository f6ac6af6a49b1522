"""Training-set statistics: the mean image (PAPER.md section 2) and the RGB covariance PCA (section 4).

Sums are kept in int64, so they are exact and partial sums from workers, chunks or a resumed
run add up to the same numbers as one pass over the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Statistics of one split, 0-255 scale.

    mean_image (H, W, C) float32; channel_mean, channel_std (C,) float64;
    eigvals (C,) descending and eigvecs (C, C) (columns) of the pixel covariance.
    """

    mean_image: np.ndarray
    channel_mean: np.ndarray
    channel_std: np.ndarray
    eigvals: np.ndarray
    eigvecs: np.ndarray
    count: int

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"mean_image": self.mean_image, "channel_mean": self.channel_mean, "channel_std": self.channel_std,
                "eigvals": self.eigvals, "eigvecs": self.eigvecs, "count": np.asarray(self.count)}  # fmt: skip

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> Stats:
        return cls(np.asarray(d["mean_image"], np.float32), np.asarray(d["channel_mean"], np.float64),
                   np.asarray(d["channel_std"], np.float64), np.asarray(d["eigvals"], np.float64),
                   np.asarray(d["eigvecs"], np.float64), int(d["count"]))  # fmt: skip

    def summary(self) -> dict[str, list[float]]:
        return {"channel_mean": self.channel_mean.round(4).tolist(), "channel_std": self.channel_std.round(4).tolist(),
                "eigvals": self.eigvals.round(4).tolist(), "eigvecs": self.eigvecs.round(6).tolist()}  # fmt: skip


class StatsAccumulator:
    """Exact running sums over uint8 (N, H, W, C) batches; `merge` adds another accumulator's sums."""

    def __init__(self, size: int, channels: int) -> None:
        self.count = 0
        self.image_sum = np.zeros((size, size, channels), np.int64)
        self.cross = np.zeros((channels, channels), np.int64)  # sum over pixels of x x^T

    def add(self, batch: np.ndarray) -> None:
        if len(batch) == 0:
            return
        self.count += len(batch)
        self.image_sum += batch.sum(axis=0, dtype=np.int64)
        c = batch.shape[-1]
        # float64 products of integers < 2^53 are exact; 8 images at a time keep the temporary small.
        for i in range(0, len(batch), 8):
            x = batch[i : i + 8].reshape(-1, c).astype(np.float64)
            self.cross += np.rint(x.T @ x).astype(np.int64)

    def merge(self, other: StatsAccumulator) -> None:
        self.count += other.count
        self.image_sum += other.image_sum
        self.cross += other.cross

    def state(self) -> dict[str, np.ndarray]:
        return {"count": np.asarray(self.count), "image_sum": self.image_sum, "cross": self.cross}

    @classmethod
    def from_state(cls, d: dict[str, np.ndarray]) -> StatsAccumulator:
        h, w, c = d["image_sum"].shape
        acc = cls(h, c)
        acc.count, acc.image_sum, acc.cross = int(d["count"]), np.array(d["image_sum"]), np.array(d["cross"])
        return acc

    def finalize(self) -> Stats:
        assert self.count > 0, "statistics of an empty split"
        h, w, c = self.image_sum.shape
        n_pixels = self.count * h * w
        mean_image = self.image_sum / self.count
        mu = self.image_sum.reshape(-1, c).sum(0) / n_pixels
        cov = self.cross / n_pixels - np.outer(mu, mu)
        std = np.sqrt(np.clip(np.diag(cov), 0, None))
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1]
        vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
        vecs = vecs * np.where(vecs.sum(0) < 0, -1.0, 1.0)  # sign convention: components sum >= 0
        return Stats(mean_image.astype(np.float32), mu, std, vals, vecs, self.count)
