"""Building blocks shared by the model files: activations, pooling choices, dropout, the convolution,
fully connected and locally connected layers."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

ACTIVATIONS = ("relu", "tanh")
POOLINGS = ("overlap", "non-overlap")


def make_activation(name: str) -> nn.Module:
    """ReLU (the paper, section 3.1) or tanh (the saturating baseline of Fig. 1)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "tanh":
        return nn.Tanh()
    raise ConfigError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def pool_geometry(pooling: str) -> tuple[int, int]:
    """(kernel, stride): 3x3/2 overlapping (section 3.4) or the traditional 2x2/2."""
    if pooling == "overlap":
        return 3, 2
    if pooling == "non-overlap":
        return 2, 2
    raise ConfigError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")


def make_pool(pooling: str, padding: int = 0, ceil_mode: bool = False) -> nn.MaxPool2d:
    kernel, stride = pool_geometry(pooling)
    if kernel == 2:  # 2x2/2 reaches the same output sizes without the overlap's padding
        padding = 0
    return nn.MaxPool2d(kernel, stride, padding=padding, ceil_mode=ceil_mode)


def _traced() -> bool:
    """True under torch.jit scripting/tracing or torch.compile: exporters and compilers see standard ops."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


class _ChunkedWeightGradConv(torch.autograd.Function):
    """F.conv2d whose weight and bias gradients are summed over slices of at most `chunk` images.

    The input gradient is one call over the whole batch, as in the standard backward.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, conv: Conv2d, chunk: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        ctx.bias_sizes = [weight.shape[0]] if bias is not None else None
        ctx.chunk = chunk
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        backward = torch.ops.aten.convolution_backward

        def call(g: Tensor, inp: Tensor, mask: list[bool]) -> tuple[Tensor | None, ...]:
            return backward(g, inp, weight, ctx.bias_sizes, stride, padding, dilation, False, [0, 0], groups, mask)

        gx = call(grad, x, [True, False, False])[0] if ctx.needs_input_grad[0] else None
        gw = gb = None
        want_w, want_b = ctx.needs_input_grad[1], ctx.bias_sizes is not None and ctx.needs_input_grad[2]
        if want_w or want_b:
            for start in range(0, x.shape[0], ctx.chunk):
                end = start + ctx.chunk
                _, w_part, b_part = call(grad[start:end], x[start:end], [False, want_w, want_b])
                # bf16 slices (autocast) are summed in float32 and rounded once, by autograd
                if want_w:
                    gw = w_part.float() if gw is None else gw.add_(w_part)
                if want_b:
                    gb = b_part.float() if gb is None else gb.add_(b_part)
        return gx, gw, gb, None, None


# Slice size for the weight gradient of an ImageNet-size net's image layer (conv1): below oneDNN's
# switch to its GEMM path at ~110 images (Conv2d).
IMAGE_LAYER_WEIGHT_GRAD_CHUNK = 64


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict); on the CPU, with `weight_grad_chunk` set, the
    weight gradient of a larger batch is summed over slices of that many images.

    Why: oneDNN computes the paper's conv1 weight gradient (3 -> 96 channels, 11x11/4 on 227x227)
    with its direct AVX-512 kernel up to a batch of ~100 images, and above that falls back to a
    GEMM path 2-2.5x slower per image: at the paper's batch of 128 that one gradient took ~410 ms
    of a ~3.1 s step, against ~190 ms as two slices of 64 (docs/benchmarks.md). The sum over
    slices is the same gradient, to float rounding.
    """

    def __init__(self, *args: Any, weight_grad_chunk: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if weight_grad_chunk is not None and weight_grad_chunk < 1:
            raise ConfigError(f"weight_grad_chunk must be >= 1, got {weight_grad_chunk}")
        self.weight_grad_chunk = weight_grad_chunk

    def forward(self, x: Tensor) -> Tensor:
        chunk = self.weight_grad_chunk
        if (
            chunk is None
            or _traced()
            or x.device.type != "cpu"
            or x.dim() != 4
            or x.shape[0] <= chunk
            or not (torch.is_grad_enabled() and self.weight.requires_grad)
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
        ):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):  # the casts autocast would make for F.conv2d
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        with torch.autocast("cpu", enabled=False):
            return _ChunkedWeightGradConv.apply(x, weight, bias, self, chunk)

    def extra_repr(self) -> str:
        extra = f", weight_grad_chunk={self.weight_grad_chunk}" if self.weight_grad_chunk is not None else ""
        return super().extra_repr() + extra


class Dropout(nn.Dropout):
    """nn.Dropout; at the paper's p = 0.5 the training mask comes from random 64-bit words, one bit
    per unit, instead of one Bernoulli draw per unit.

    torch's CPU dropout spends ~4.5 ms on a (64, 4096) fc activation drawing 262,144 Bernoulli
    samples; 4,096 random words unpacked into the same number of fair bits take ~0.3 ms. Each
    unit is still kept with probability 1/2 (to within 2^-64), independently, from torch's generator (so
    torch.manual_seed still fixes the masks), and the kept units are scaled by 2 as before.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p != 0.5 or self.inplace or _traced():
            return super().forward(x)
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 63) // 64, 1), dtype=torch.int64, device=x.device)
        bits = (words >> torch.arange(64, device=x.device)) & 1
        mask = bits.view(-1)[:n].view(x.shape).to(x.dtype).mul_(2.0)
        return x * mask


# oneDNN's matmul as torch exposes it (the op torch.compile's CPU backend uses); None without it.
_LINEAR_OP: Any = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b with the forward and both gradients as oneDNN matmuls.

    torch's float32 CPU matmul is MKL's sgemm, which on the AMD machines we train on runs the
    fc layers' batch-64 GEMMs at ~100-120 GFLOP/s; oneDNN's matmul, which dispatches on the
    instruction set rather than the vendor, runs the same products at ~150-175 (figures in
    docs/benchmarks.md). The weight gradient, a product over the batch that writes the whole
    weight, is one too: grad^T x = grad^T (x^T)^T, with x^T as the "weight" operand.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _LINEAR_OP(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = _LINEAR_OP(grad, weight.t(), None, "none", [], "") if ctx.needs_input_grad[0] else None
        gw = _LINEAR_OP(grad.t().contiguous(), x.t(), None, "none", [], "") if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _onednn_eligible(x: Tensor, weight: Tensor) -> bool:
    if _LINEAR_OP is None or x.device.type != "cpu" or x.dim() != 2:
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return False  # bf16 autocast already runs its linears in oneDNN
    return not _traced()


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear, with float32 CPU matrices multiplied by oneDNN (see _OneDNNLinear)."""
    if _onednn_eligible(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) whose float32 CPU products run in oneDNN."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class LocallyConnected2d(nn.Module):
    """A convolution whose filters are not shared across positions (cuda-convnet's `local` layer).

    Weight (out_h * out_w, out_channels, in_channels * k * k); one bias per output unit.
    The output size is fixed at construction, so the input size must be too.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, input_size: int, padding: int = 0, stride: int = 1
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding, self.stride, self.input_size = kernel_size, padding, stride, input_size
        self.output_size = (input_size + 2 * padding - kernel_size) // stride + 1
        if self.output_size < 1:
            raise ConfigError(f"locally connected layer: input {input_size} too small for kernel {kernel_size}")
        positions = self.output_size**2
        fan_in = in_channels * kernel_size**2
        self.weight = nn.Parameter(torch.empty(positions, out_channels, fan_in))
        self.bias = nn.Parameter(torch.zeros(out_channels, self.output_size, self.output_size))
        bound = 1 / math.sqrt(fan_in)  # torch's default for conv/linear layers
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        if h != self.input_size or w != self.input_size:
            raise ValueError(f"LocallyConnected2d built for {self.input_size}x{self.input_size} input, got {h}x{w}")
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (N, C*k*k, L)
        # one small GEMM per position, batched: (L, N, C*k*k) @ (L, C*k*k, O) -> (L, N, O)
        out = torch.bmm(cols.permute(2, 0, 1), self.weight.transpose(1, 2))
        return out.permute(1, 2, 0).reshape(n, self.out_channels, self.output_size, self.output_size) + self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"padding={self.padding}, input_size={self.input_size}"
        )
