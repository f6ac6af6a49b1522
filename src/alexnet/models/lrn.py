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
forward. Two backends, both with a hand-written backward:

- ``fused`` (CPU): a small C++ kernel (csrc/lrn_cpu.cpp), one pass over memory forward and one
  backward, built on first use (or by `make setup`) with the package's other kernels
  (alexnet/kernels.py); bf16/fp16 tensors are read and written in their own type with float32
  arithmetic (no cast copies);
- ``torch`` (any dtype and device, and the fallback where no compiler is found): the window
  sum as n-1 shifted in-place adds, rsqrt for beta=0.75.

Tensors the kernel takes (float32/bf16/fp16 on the CPU) go through two registered ops,
``alexnet::lrn`` and ``alexnet::lrn_backward``, which pick the backend when they run:
``ALEXNET_LRN_BACKEND=torch|fused|auto`` (default auto, which follows the fast-path switch in
models/layers.py), read at run time, so also in compiled graphs. The backward recomputes the
denominator from the input, the only tensor saved. Other tensors (GPU, float64) take the torch
backend as plain ops, which torch.compile can fuse, with the denominator saved. Figures in
docs/benchmarks.md (`alexnet bench lrn`).

Graph capture: torch.export and torch.compile keep the ops (they have fake implementations and
registered gradients); torch.onnx.export writes ONNX's own ``LRN`` operator; torch.jit traces
``torch.nn.functional.local_response_norm``, so TorchScript files load without this package.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import kernels
from .layers import fast_paths_enabled

CONVENTIONS = ("paper", "per-term")
BACKENDS = ("auto", "fused", "torch")


def _kernel_takes(x: Tensor) -> bool:
    # bf16/fp16 (autocast) run through the kernel in their own type, computed in float32
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16, torch.float16) and x.dim() >= 3


def backend_for(x: Tensor) -> str:
    """Which backend an input of this dtype/device would use ("fused" or "torch")."""
    choice = os.environ.get("ALEXNET_LRN_BACKEND", "auto")
    if choice not in BACKENDS:
        raise ValueError(f"ALEXNET_LRN_BACKEND={choice!r}; choose one of {BACKENDS}")
    eligible = _kernel_takes(x)
    if choice == "torch" or not eligible or (choice == "auto" and "fused-lrn" not in fast_paths_enabled()):
        if choice == "fused" and not eligible:
            raise ValueError(f"the fused LRN takes float CPU tensors, got {x.dtype} on {x.device}")
        return "torch"
    if kernels.load() is None:
        if choice == "fused":
            raise RuntimeError("ALEXNET_LRN_BACKEND=fused but the C++ kernel could not be built")
        return "torch"
    return "fused"


def _memory_format(x: Tensor) -> torch.memory_format:
    """The layout both backends write: channels_last for a channels_last 4-D input (as the kernel
    decides, csrc/lrn_cpu.cpp is_channels_last), contiguous otherwise."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


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


def _torch_forward(x: Tensor, size: int, scale: float, beta: float, k: float) -> tuple[Tensor, Tensor]:
    """(output, denominator) of the torch backend."""
    denom = _window_sum(x * x, size, size // 2).mul_(scale).add_(k)  # k + c * sum a^2
    return x * _neg_pow(denom, beta), denom


def _torch_backward(grad: Tensor, x: Tensor, denom: Tensor, size: int, scale: float, beta: float) -> Tensor:
    inv = _neg_pow(denom, beta)  # denom^-beta
    # d b_i / d a_j = [i == j] denom_i^-beta - 2 c beta a_i a_j denom_i^(-beta-1), j in window(i)
    # so grad_a_j = g_j denom_j^-beta - 2 c beta a_j * sum_{i: j in window(i)} g_i a_i denom_i^(-beta-1).
    t = grad * x * inv / denom
    # The transposed window: i ranges over (size-1)//2 channels before j and size//2 after.
    s = _window_sum(t, size, (size - 1) // 2)
    return grad * inv - s.mul_(x).mul_(2.0 * scale * beta)


@torch.library.custom_op("alexnet::lrn", mutates_args=())
def _lrn(x: Tensor, size: int, scale: float, beta: float, k: float) -> Tensor:
    if backend_for(x) == "fused":
        return kernels.load().lrn_forward(x, size, scale, beta, k)  # bf16/fp16 read and written as they are
    return _torch_forward(x, size, scale, beta, k)[0].contiguous(memory_format=_memory_format(x))


@torch.library.custom_op("alexnet::lrn_backward", mutates_args=())
def _lrn_backward(grad: Tensor, x: Tensor, size: int, scale: float, beta: float, k: float) -> Tensor:
    if backend_for(x) == "fused":
        return kernels.load().lrn_backward(grad, x, size, scale, beta, k)
    denom = _torch_forward(x, size, scale, beta, k)[1]
    return _torch_backward(grad.to(x.dtype), x, denom, size, scale, beta).contiguous(memory_format=_memory_format(x))


@_lrn.register_fake
def _lrn_fake(x: Tensor, size: int, scale: float, beta: float, k: float) -> Tensor:
    return torch.empty_like(x, memory_format=_memory_format(x))


@_lrn_backward.register_fake
def _lrn_backward_fake(grad: Tensor, x: Tensor, size: int, scale: float, beta: float, k: float) -> Tensor:
    return torch.empty_like(x, memory_format=_memory_format(x))


@_lrn.register_vmap
def _lrn_vmap(info, in_dims, x, size, scale, beta, k):
    # LRN works per image: the vmapped dimension folds into the batch
    x = x.movedim(in_dims[0], 0)
    return _lrn(x.flatten(0, 1), size, scale, beta, k).unflatten(0, x.shape[:2]), 0


@_lrn_backward.register_vmap
def _lrn_backward_vmap(info, in_dims, grad, x, size, scale, beta, k):
    grad, x = (t.movedim(d, 0) if d is not None else t.expand(info.batch_size, *t.shape) for t, d in zip((grad, x), in_dims[:2]))
    return _lrn_backward(grad.flatten(0, 1), x.flatten(0, 1), size, scale, beta, k).unflatten(0, x.shape[:2]), 0


@kernels.differentiable(torch.ops.alexnet.lrn.default)
class _LRN(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, size: int, scale: float, beta: float, k: float) -> Tensor:  # type: ignore[override]
        return torch.ops.alexnet.lrn(x, size, scale, beta, k)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        x, *params = inputs
        ctx.save_for_backward(x)  # the backward recomputes the denominator from the input
        ctx.params = params

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return torch.ops.alexnet.lrn_backward(grad, x, *ctx.params), None, None, None, None


class _TorchLRN(torch.autograd.Function):
    """The torch backend as plain ops, for tensors the kernel does not take (GPU, float64)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, size: int, scale: float, beta: float, k: float) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return _torch_forward(x, size, scale, beta, k)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
        x, size, scale, beta, _ = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, output[1])
        ctx.params = (size, scale, beta)

    @staticmethod
    def backward(ctx, grad: Tensor, _: Tensor) -> tuple:  # type: ignore[override]
        x, denom = ctx.saved_tensors
        return _torch_backward(grad, x, denom, *ctx.params), None, None, None, None


def _onnx_lrn(x: Tensor, size: int, scale: float, beta: float, k: float) -> Tensor:
    """ONNX's LRN, y = x / (bias + alpha/size * sum)^beta: alpha is c * n in both conventions."""
    attrs = {"size": size, "alpha": scale * size, "beta": beta, "bias": k}
    return torch.onnx.ops.symbolic("LRN", (x,), attrs, dtype=x.dtype, shape=x.shape)


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
    if torch.onnx.is_in_onnx_export() and x.dim() == 4 and size % 2:
        # (ONNX centres an even window one channel later than torch: those go through the torch ops below)
        return _onnx_lrn(x, size, scale, beta, k)
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
        return F.local_response_norm(x, size, alpha=scale * size, beta=beta, k=k)
    if _kernel_takes(x):
        return _LRN.apply(x, size, scale, beta, k)
    return _TorchLRN.apply(x, size, scale, beta, k)[0]


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
