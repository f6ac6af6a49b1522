"""Local response normalization (PAPER.md section 3.3), forward and backward by hand.

    b_i = a_i / (k + c * sum_{j in window(i)} a_j^2) ** beta

with the window n channels wide, centred on i (n//2 before, (n-1)//2 after, as torch
does). The scale c depends on the convention:

- ``"paper"``: c = alpha, the formula as printed in the paper (alpha on the plain sum);
- ``"per-term"``: c = alpha / n, as cuda-convnet, Caffe and torch.nn.LocalResponseNorm.

With the paper's constants (k=2, n=5, alpha=1e-4, beta=0.75) the "paper" convention is
the default. ``LocalResponseNorm(..., convention="per-term")`` equals
``torch.nn.LocalResponseNorm(size=n, alpha=alpha, beta=beta, k=k)``.

Why our own: the built-in builds the window sum with a padded 3-D average pool and
differentiates through it with autograd; on a 2-core CPU it is ~40% of a whole AlexNet
forward. Two backends here, both with a hand-written backward:

- ``fused`` (CPU): a small C++ kernel (csrc/lrn_cpu.cpp), one pass over memory forward and one
  backward, built on first use (or by `make setup`) with the package's other kernels
  (alexnet/kernels.py); bf16/fp16 tensors are read and written in their own type with float32
  arithmetic (no cast copies);
- ``torch`` (any dtype and device, and the fallback where no compiler is found): the window
  sum as n-1 shifted in-place adds, rsqrt for beta=0.75, only input and denominator saved.

``ALEXNET_LRN_BACKEND=torch|fused|auto`` forces one (default auto). Figures in
docs/benchmarks.md (`alexnet bench lrn`).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from .. import kernels

CONVENTIONS = ("paper", "per-term")
BACKENDS = ("auto", "fused", "torch")


def backend_for(x: Tensor) -> str:
    """Which backend an input of this dtype/device would use ("fused" or "torch")."""
    choice = os.environ.get("ALEXNET_LRN_BACKEND", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"ALEXNET_LRN_BACKEND={choice!r}; choose one of {BACKENDS}")
    # bf16/fp16 (autocast) run through the kernel in their own type, computed in float32
    eligible = x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16) and x.dim() >= 3
    if choice == "torch" or not eligible:
        if choice == "fused" and not eligible:
            raise ValueError(f"the fused LRN takes float CPU tensors, got {x.dtype} on {x.device}")
        return "torch"
    if kernels.load() is None:
        if choice == "fused":
            raise RuntimeError("ALEXNET_LRN_BACKEND=fused but the C++ kernel could not be built")
        return "torch"
    return "fused"


def _window_sum(x: Tensor, size: int, before: int) -> Tensor:
    """Sum of ``x`` over a window of ``size`` channels starting ``before`` channels back.

    Zero outside [0, C). Works for any layout (contiguous or channels_last) because it
    only slices along dim 1.
    """
    channels = x.shape[1]
    out = x.clone()
    for offset in range(-before, size - before):
        if offset == 0:
            continue
        if offset > 0:  # out[:, i] += x[:, i + offset]
            if offset < channels:
                out[:, : channels - offset] += x[:, offset:]
        else:  # out[:, i] += x[:, i - |offset|]
            shift = -offset
            if shift < channels:
                out[:, shift:] += x[:, : channels - shift]
    return out


def _neg_pow(denom: Tensor, beta: float) -> Tensor:
    """denom ** -beta, with the common betas done by rsqrt/sqrt (several times faster than pow)."""
    if beta == 0.75:
        r = torch.rsqrt(denom)
        return r.mul_(torch.sqrt(r))
    if beta == 0.5:
        return torch.rsqrt(denom)
    if beta == 1.0:
        return torch.reciprocal(denom)
    return torch.pow(denom, -beta)


class _FusedLRN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, size: int, scale: float, beta: float, k: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.params = (size, scale, beta, k)
        return kernels.load().lrn_forward(x, size, scale, beta, k)  # bf16/fp16 read and written as they are

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return kernels.load().lrn_backward(grad_out, x, *ctx.params), None, None, None, None


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, size: int, scale: float, beta: float, k: float) -> Tensor:  # type: ignore[override]
        denom = _window_sum(x * x, size, size // 2).mul_(scale).add_(k)  # k + c * sum a^2
        out = x * _neg_pow(denom, beta)
        ctx.save_for_backward(x, denom)
        ctx.params = (size, scale, beta)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, denom = ctx.saved_tensors
        size, scale, beta = ctx.params
        inv = _neg_pow(denom, beta)  # denom^-beta
        # d b_i / d a_j = [i == j] denom_i^-beta - 2 c beta a_i a_j denom_i^(-beta-1), j in window(i)
        # so grad_a_j = g_j denom_j^-beta - 2 c beta a_j * sum_{i: j in window(i)} g_i a_i denom_i^(-beta-1).
        t = grad_out * x * inv / denom
        # The transposed window: i ranges over (size-1)//2 channels before j and size//2 after.
        s = _window_sum(t, size, (size - 1) // 2)
        grad_in = grad_out * inv - s.mul_(x).mul_(2.0 * scale * beta)
        return grad_in, None, None, None, None


def local_response_norm(
    x: Tensor,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    convention: str = "paper",
) -> Tensor:
    """Functional LRN over dim 1 of an (N, C, ...) tensor; see the module docstring."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown LRN convention {convention!r}; choose one of {CONVENTIONS}")
    if x.dim() < 3:
        raise ValueError(f"local_response_norm expects (N, C, ...) input, got shape {tuple(x.shape)}")
    scale = alpha if convention == "paper" else alpha / size
    fn = _FusedLRN if backend_for(x) == "fused" else _LRNFunction
    return fn.apply(x, size, scale, beta, k)


class LocalResponseNorm(nn.Module):
    """LRN across channels. Defaults are the paper's: n=5, alpha=1e-4, beta=0.75, k=2, alpha on the sum."""

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        convention: str = "paper",
    ) -> None:
        super().__init__()
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown LRN convention {convention!r}; choose one of {CONVENTIONS}")
        if size < 1:
            raise ValueError(f"LRN size must be >= 1, got {size}")
        self.size, self.alpha, self.beta, self.k, self.convention = size, alpha, beta, k, convention

    def forward(self, x: Tensor) -> Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.convention)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, convention={self.convention!r}"
