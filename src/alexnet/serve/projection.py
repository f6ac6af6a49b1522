"""A lower bound on every database row's distance to a query from m + 1 numbers a row: the
first pass of the explorer's neighbour search (index.py).

P (m x D) has orthonormal rows: the database's mean direction and its top m - 1 principal
directions. For v = q - x, |v|^2 = |P v|^2 + |res v|^2 with res y = y - P^T P y, and
res v = res q - res x, so by the triangle inequality, with y_x = (P x, |res x|) in R^(m+1),

    |q - x|^2 >= |P q - P x|^2 + (|res q| - |res x|)^2 = |y_q - y_x|^2.

So each row keeps y_x (in float32), and a query costs one (N, m + 1) matrix-vector product:
|y_q - y_x|^2 = |y_q|^2 + |y_x|^2 - 2 y_q.y_x. fc7 vectors concentrate their variance in few
directions, so the bound is close to the distance and few rows need an exact one; vectors without
such structure (random noise) get a bound far below the distance, and the search after it has to
look at more rows, never at too few. The bound holds for P's first m_l rows as well (a looser
one): level 0 (m = 32, 8 MB for 60,000 rows) is read for every row, level 1 (m = 128) only for
the rows level 0 leaves, a quarter of the bytes of one level of 128 for fewer rows after it.

The bound stays a bound in floating point, every error a multiple of S = |q|^2 + |x|^2, all
subtracted as one `slack` * S (`Projection.slack`):
- P is orthonormal only to within eta = |P P^T - I|_F (float64 QR: ~1e-14); then
  |v|^2 >= (1 - 3 eta) |P v|^2 + |res v|^2 (|P^T P v|^2 >= (1 - eta) |P v|^2, and the cross term
  (P v).(I - P P^T)(P v) >= -eta |P v|^2), and 3 eta |y_q - y_x|^2 <= 6 eta (1 + 2 eta) S;
- y_x and y_q are computed in float64 to within `rel` |x| each (`project`): -10 rel S;
- the float32 product of m + 1 terms plus |y_x|^2 (Higham's gamma_(m+2) times the sum of their
  magnitudes, <= 2 S), the rounding of y_x, y_q and |y_x|^2 to float32 and the final sum: 8 u S;
- the float64 distance of retrieval.py that the bound is compared with: float64_slack(D) S.

Built once per feature folder (a randomized range finder on a sample of rows, then one float64
pass over all of them: seconds for 60,000 x 4096) and cached in it as projection-M.npz, stamped
with the features file's size and mtime, so a re-extracted folder gets a new one.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import save_npz_atomic

DIMS = (32, 128)  # the levels' m: the first pass reads N x 33 float32 (7.9 MB for 60,000 rows); docs/benchmarks.md
SAMPLE = 8192  # rows the principal directions are estimated from (any orthonormal P keeps the bound)
MARGIN = 1.25  # the error bounds below are first-order; the margin covers their second-order terms
U32, U64 = 2.0**-24, 2.0**-53  # unit roundoffs


def gamma(n: int, u: float) -> float:
    """Higham's gamma_n: |fl(sum of n terms) - exact| <= gamma_n * sum |terms|, in any order."""
    return n * u / (1 - n * u)


def float64_slack(dim: int) -> float:
    """|fl64(|q - x|^2) - |q - x|^2| <= this * (|q|^2 + |x|^2): the float64 ranking's own rounding
    (sum of `dim` squares of differences, (|q| + |x|)^2 <= 2 (|q|^2 + |x|^2)), doubled."""
    return 4 * gamma(dim + 2, U64)


@dataclass
class Projection:
    """P and, per database row and level l, y_x = (P_l x, |res_l x|) in float32 with |y_x|^2 in
    float64, where P_l is P's first dims[l] rows; and |x|^2. Level 0 is scanned for every row,
    the later ones (more dimensions, a closer bound) only for the rows it leaves."""

    basis: np.ndarray  # (M, D) float64, P
    dims: tuple[int, ...]  # the levels' m, ascending, the last M
    coords: list[torch.Tensor]  # per level (N, m + 1) float32, y_x rounded
    coord_sq: list[np.ndarray]  # per level (N,) float64, |y_x|^2 of the float64 y_x
    sq_norms: np.ndarray  # (N,) float64, |x|^2
    eta: float  # |P P^T - I|_F, a bound on how far P (and so each P_l) is from orthonormal
    rel: float  # the float64 y_x and y_q err by at most rel |x| (rel |q|), at every level

    def __post_init__(self) -> None:
        d = self.basis.shape[1]
        self.slack = [MARGIN * (6 * self.eta * (1 + 2 * self.eta) + 10 * self.rel + 2 * gamma(m + 2, U32) + 8 * U32)
                      + float64_slack(d) for m in self.dims]  # fmt: skip
        # |y_x|^2 less the row's share of the slack: the product's constant term, one pass with it
        self._offset = [torch.from_numpy(c - s * self.sq_norms).float() for c, s in zip(self.coord_sq, self.slack)]
        self._basis = torch.from_numpy(self.basis)

    @classmethod
    def build(cls, features: np.ndarray, dims: tuple[int, ...] = DIMS, chunk_rows: int = 4096, seed: int = 0) -> Projection:
        """P from a sample of `features` (N, D), then every level's y_x of every row."""
        n, d = features.shape
        basis = principal_basis(features, min(dims[-1], d), seed)
        levels = tuple(sorted({min(m, len(basis)) for m in dims}))
        eta, rel = orthonormality(basis), 0.0
        coords = [torch.empty((n, m + 1), dtype=torch.float32) for m in levels]
        coord_sq, sq_norms = [np.empty(n) for _ in levels], np.empty(n)
        for s in range(0, n, chunk_rows):
            x = torch.from_numpy(np.asarray(features[s : s + chunk_rows], np.float64))
            e = s + len(x)
            sq_norms[s:e] = x.square().sum(1).numpy()
            ys, rel = project(x, torch.from_numpy(basis), levels, eta)
            for y, c, c_sq in zip(ys, coords, coord_sq):
                c[s:e], c_sq[s:e] = y, y.square().sum(1).numpy()
        return cls(basis, levels, coords, coord_sq, sq_norms, eta, rel)

    def query(self, q: np.ndarray) -> list[tuple[torch.Tensor, float]]:
        """Per level, what `lower_bounds` needs of a float32 query q (D,): y_q in float32 and the
        product's constant term, |y_q|^2 less the query's share of the slack."""
        q64 = torch.from_numpy(np.asarray(q, np.float64))[None]  # (torch: its threads, not numpy's BLAS pool)
        q_sq = float(q64.square().sum())
        ys, _ = project(q64, self._basis, self.dims, self.eta)
        return [(y[0].float(), float(y.square().sum()) - slack * q_sq) for y, slack in zip(ys, self.slack)]

    def lower_bounds(self, query: list[tuple[torch.Tensor, float]], level: int = 0, rows: np.ndarray | None = None
                     ) -> np.ndarray:  # fmt: skip
        """(N,) or (len(rows),) float64: per row of the database (or of `rows`), a number <= |q - x|^2
        and <= its float64 value as retrieval.py computes it, from this level. `query`: self.query(q)."""
        y, const = query[level]
        coords, offset = self.coords[level], self._offset[level]
        if rows is not None:
            at = torch.from_numpy(rows)
            coords, offset = coords.index_select(0, at), offset.index_select(0, at)
        return torch.addmv(offset, coords, y, alpha=-2.0).double().add_(const).numpy()

    def save(self, path: Path, stamp: np.ndarray) -> None:
        levels = {f"coords{i}": c.numpy() for i, c in enumerate(self.coords)}
        levels.update({f"coord_sq{i}": c for i, c in enumerate(self.coord_sq)})
        save_npz_atomic(path, {"basis": self.basis, "dims": np.array(self.dims), "sq_norms": self.sq_norms,
                               "eta": np.array(self.eta), "rel": np.array(self.rel), "stamp": stamp, **levels})  # fmt: skip

    @classmethod
    def load(cls, path: Path, stamp: np.ndarray, rows: int) -> Projection | None:
        """The projection cached at `path` when it was made from the same file (`stamp`), else None."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if not np.array_equal(z["stamp"], stamp) or len(z["sq_norms"]) != rows:
                    return None
                dims = tuple(int(m) for m in z["dims"])
                return cls(z["basis"], dims, [torch.from_numpy(z[f"coords{i}"]) for i in range(len(dims))],
                           [z[f"coord_sq{i}"] for i in range(len(dims))], z["sq_norms"], float(z["eta"]),
                           float(z["rel"]))  # fmt: skip
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # unreadable: built again
            return None


def file_stamp(path: str | os.PathLike[str]) -> np.ndarray:
    """What identifies a features file's version: its size and modification time (ns)."""
    st = Path(path).stat()
    return np.array([st.st_size, st.st_mtime_ns], np.int64)


def project(x: torch.Tensor, basis: torch.Tensor, dims: tuple[int, ...], eta: float) -> tuple[list[torch.Tensor], float]:
    """Per level m of `dims`, y_x = (P_m x, |res_m x|) for float64 rows x (B, D), with P_m the first
    m rows of `basis`; and rel: each computed y_x is within rel |x| of the exact one.

    P x errs by <= gamma_D |P|_F |x| (Higham, per coordinate, then summed); res x = x - P^T (P x)
    computed then errs by that through P^T (|P^T| <= sqrt(1 + eta)), plus gamma_m |P|_F |P x| and one
    rounding of the subtraction; its norm adds gamma_D. The two parts together: sqrt(2) of the larger.
    |P_m|_F <= |P|_F, so the bound for all of P holds for every level."""
    big_m, d = basis.shape
    p = x @ basis.T  # (B, M)
    ys = [torch.cat([p[:, :m], (x - p[:, :m] @ basis[:m]).norm(dim=1, keepdim=True)], 1) for m in dims]  # (B, m + 1)
    fro = math.sqrt(big_m * (1 + eta))
    err = gamma(d, U64) * fro * (1 + math.sqrt(1 + eta)) + gamma(big_m, U64) * fro * (1 + eta) + 2 * U64 + gamma(d, U64)
    return ys, MARGIN * math.sqrt(2) * err


def principal_basis(features: np.ndarray, dims: int, seed: int = 0, power: int = 3) -> np.ndarray:
    """(dims, D) float64 orthonormal rows: the mean direction, then the top principal directions of
    a sample of rows (a randomized range finder, Halko et al. 2011, with `power` iterations)."""
    n, d = features.shape
    g = torch.Generator().manual_seed(seed)
    rows = np.sort(torch.randperm(n, generator=g)[: min(n, SAMPLE)].numpy())
    x = torch.from_numpy(np.asarray(features[rows], np.float32))
    mean = x.double().mean(0)
    xc = x - mean.float()
    y = xc @ torch.randn(d, dims + 8, generator=g)  # (S, dims + 8)
    for _ in range(power):
        y = xc @ torch.linalg.qr(xc.T @ torch.linalg.qr(y).Q).Q
    q = torch.linalg.qr(y).Q
    _, _, vh = torch.linalg.svd(q.T @ xc, full_matrices=False)  # (dims + 8, D), by singular value
    cols = torch.cat([mean[None], vh[: dims - 1].double()]).T  # (D, dims)
    return torch.linalg.qr(cols).Q.T.contiguous().numpy()


def orthonormality(basis: np.ndarray) -> float:
    """|P P^T - I|_F in float64, rounded up by the error of computing it."""
    m, d = basis.shape
    b = torch.from_numpy(basis)
    gram = b @ b.T  # each entry within gamma_D |P_i| |P_j| <= gamma_D max|G_ii| of its value
    return float((gram - torch.eye(m, dtype=gram.dtype)).norm()) + 2 * m * gamma(d, U64) * float(gram.abs().max())
