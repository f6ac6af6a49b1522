"""Building blocks shared by the model files: activations, pooling choices, dropout, the convolution,
fully connected and locally connected layers.

Conv2d, Linear and Dropout here (and LocalResponseNorm in lrn.py) have CPU fast paths, chosen in
one place: FAST_PATHS and `fast_path` below. `ALEXNET_FAST_PATHS=0` (or `set_fast_paths(False)`)
turns them all off, for A/B runs and debugging.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import kernels
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


# ---------------------------------------------------------------------------- CPU fast paths
# Each computes what the standard torch layer computes (to float rounding), faster on the CPU;
# the measurements behind each are in docs/benchmarks.md ("Training step").
FAST_PATHS: dict[str, str] = {
    "conv-weight-grad-slices": "Conv2d(weight_grad_chunk=n): a batch's weight gradient summed over slices of n "
    "images, below the batch size where oneDNN leaves its direct kernel for a slower GEMM path",
    "onednn-linear": "Linear: float32 products in oneDNN's matmul rather than torch's default BLAS (MKL sgemm, "
    "slow on AMD CPUs)",
    "bit-dropout": "Dropout(0.5): the training mask from the bits of random 64-bit words, not a Bernoulli draw "
    "per unit",
    "fused-lrn": "LocalResponseNorm: the fused C++ kernel (csrc/lrn_cpu.cpp) rather than torch ops",
}
_switch: frozenset[str] | None = None  # set_fast_paths; None: ALEXNET_FAST_PATHS decides


def set_fast_paths(enabled: bool | Iterable[str] | None) -> None:
    """Switch the CPU fast paths for this process: True or False for all, a set of FAST_PATHS names
    for those only, None to follow ALEXNET_FAST_PATHS again (for A/B runs and debugging)."""
    global _switch
    if enabled is None or isinstance(enabled, bool):
        _switch = None if enabled is None else frozenset(FAST_PATHS) if enabled else frozenset()
        return
    _switch = _checked_names(enabled, "set_fast_paths")


def _checked_names(names: Iterable[str], where: str) -> frozenset[str]:
    chosen = frozenset(names)
    unknown = sorted(chosen - FAST_PATHS.keys())
    if unknown:
        raise ConfigError(f"{where}: unknown fast path {', '.join(unknown)}; valid: {', '.join(FAST_PATHS)}")
    return chosen


def fast_paths_enabled() -> frozenset[str]:
    """The fast paths switched on: set_fast_paths, else ALEXNET_FAST_PATHS (1/all, the default;
    0/none; or a comma-separated list of FAST_PATHS names)."""
    if _switch is not None:
        return _switch
    value = os.environ.get("ALEXNET_FAST_PATHS", "all").strip()
    if value in ("1", "all", ""):
        return frozenset(FAST_PATHS)
    if value in ("0", "none"):
        return frozenset()
    return _checked_names((v.strip() for v in value.split(",") if v.strip()), "ALEXNET_FAST_PATHS")


def fast_path(name: str, x: Tensor) -> bool:
    """Whether fast path `name` (a FAST_PATHS key) runs on input `x`: the one rule every fast layer follows.

    Only on the CPU, only while switched on (fast_paths_enabled), and never while torch.export,
    torch.onnx.export or torch.jit capture a graph: a captured graph holds the standard op, which
    every runtime knows. torch.compile and torch.func keep them (they are registered ops or
    traceable Functions). Each layer adds the conditions of its own kernel (dtype, shape).
    """
    assert name in FAST_PATHS, name
    if x.device.type != "cpu" or torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_exporting():
        return False
    return name in fast_paths_enabled()


class _ChunkedWeightGradConv(torch.autograd.Function):
    """F.conv2d whose weight and bias gradients are summed over slices of at most `chunk` images.

    The input gradient is one call over the whole batch, as in the standard backward.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None, geometry: tuple, chunk: int) -> Tensor:  # type: ignore[override]
        stride, padding, dilation, groups = geometry
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, bias, geometry, chunk = inputs
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.chunk = geometry, chunk
        ctx.bias_sizes = [weight.shape[0]] if bias is not None else None

    @staticmethod
    def backward(ctx: Any, grad: Tensor):  # type: ignore[override]
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


# Slice size for the weight gradient of an ImageNet-size net's image layer (conv1): below the
# batch (~110 for the paper's conv1) where oneDNN leaves its direct kernel (docs/benchmarks.md).
IMAGE_LAYER_WEIGHT_GRAD_CHUNK = 64


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict); with `weight_grad_chunk` set, a larger batch's
    weight gradient is summed over slices of that many images (fast path "conv-weight-grad-slices"):
    the same gradient, to float rounding, from oneDNN's faster kernel for the smaller problem."""

    def __init__(self, *args: Any, weight_grad_chunk: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if weight_grad_chunk is not None and weight_grad_chunk < 1:
            raise ConfigError(f"weight_grad_chunk must be >= 1, got {weight_grad_chunk}")
        self.weight_grad_chunk = weight_grad_chunk

    def forward(self, x: Tensor) -> Tensor:
        chunk = self.weight_grad_chunk
        if (
            chunk is None
            or not fast_path("conv-weight-grad-slices", x)
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
        geometry = (list(self.stride), list(self.padding), list(self.dilation), self.groups)
        with torch.autocast("cpu", enabled=False):
            return _ChunkedWeightGradConv.apply(x, weight, bias, geometry, chunk)

    def extra_repr(self) -> str:
        extra = f", weight_grad_chunk={self.weight_grad_chunk}" if self.weight_grad_chunk is not None else ""
        return super().extra_repr() + extra


class Dropout(nn.Dropout):
    """nn.Dropout; at the paper's p = 0.5 in training (fast path "bit-dropout") the mask comes from
    random 64-bit words, one bit per unit: the same distribution (each unit kept with probability 1/2,
    to within 2^-64, independently, scaled by 2), drawn from torch's generator (torch.manual_seed
    fixes it) at a fraction of the cost of one Bernoulli draw per unit."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p != 0.5 or self.inplace or not fast_path("bit-dropout", x):
            return super().forward(x)
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 63) // 64, 1), dtype=torch.int64, device=x.device)
        bits = (words >> torch.arange(64, device=x.device)) & 1
        mask = bits.view(-1)[:n].view(x.shape).to(x.dtype).mul_(2.0)
        return x * mask


# oneDNN's matmul as torch exposes it (the op torch.compile's CPU backend uses); None without it.
_LINEAR_OP: Any = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


@torch.library.custom_op("alexnet::linear", mutates_args=())
def _onednn_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """y = x W^T + b as a oneDNN matmul (2-D float32 CPU tensors)."""
    return _LINEAR_OP(x, weight, bias, "none", [], "")


@_onednn_linear.register_fake
def _onednn_linear_fake(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


@_onednn_linear.register_vmap
def _onednn_linear_vmap(info: Any, in_dims: tuple, x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, int]:
    # batched operands (per-sample gradients, model ensembles) in standard broadcasting ops
    x, weight, bias = (t.movedim(d, 0) if t is not None and d is not None else t for t, d in zip((x, weight, bias), in_dims))
    out = torch.matmul(x, weight.transpose(-1, -2))
    if bias is not None:
        out = out + (bias.unsqueeze(-2) if in_dims[2] is not None else bias)
    return out, 0


@kernels.differentiable(torch.ops.alexnet.linear.default)
class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        return torch.ops.alexnet.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        # both gradients are oneDNN matmuls too; the weight's is grad^T x = grad^T (x^T)^T, x^T as the "weight"
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = torch.ops.alexnet.linear(grad, weight.t(), None) if ctx.needs_input_grad[0] else None
        gw = torch.ops.alexnet.linear(grad.t().contiguous(), x.t(), None) if ctx.needs_input_grad[1] else None
        gb = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear; 2-D float32 CPU products in oneDNN (fast path "onednn-linear")."""
    if (
        _LINEAR_OP is not None
        and x.dim() == 2
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")  # bf16 autocast already runs its linears in oneDNN
        and fast_path("onednn-linear", x)
    ):
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


class ImageClassifier(nn.Module):
    """`features` (conv part) then `classifier` (fc part) on the flattened maps; `forward_features` and
    `forward_head` run the halves apart (as timm's models do), e.g. for pool5 or fc7 features.

    Each model declares its named layers in `__init__` as `feature_layers` (models/spec.py)."""

    features: nn.Module
    classifier: nn.Module
    feature_layers: tuple  # of spec.FeatureLayer

    def input_padding(self, size: int) -> int:
        """Right/bottom zero padding the model adds to a `size` input before its first layer."""
        return 0

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(x, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

