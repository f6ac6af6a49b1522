"""The convolution layer: nn.Conv2d's results, with the CPU weight gradient summed over batch slices."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from alexnet.errors import ConfigError
from alexnet.models import create_model
from alexnet.models.layers import Conv2d


class _CountBackwardCalls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.batches.append(args[1].shape[0])
        return func(*args, **(kwargs or {}))


def _pair(bias: bool, **geometry):
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 6, 3, bias=bias, **geometry)
    ours = Conv2d(4, 6, 3, bias=bias, weight_grad_chunk=4, **geometry)
    ours.load_state_dict(ref.state_dict())  # same parameters, same state-dict keys
    return ref, ours


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_match_nn_conv2d_and_come_from_slices(bias, input_grad, channels_last):
    ref, ours = _pair(bias, stride=2, padding=1)
    x = torch.randn(10, 4, 9, 9)  # 10 images in slices of 4, 4 and 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(input_grad), x.clone().requires_grad_(input_grad)
    g = torch.randn(10, 6, 5, 5)
    counter = _CountBackwardCalls()
    with counter:
        out = ours(xa)
        out.backward(g)
    assert counter.batches == ([10] if input_grad else []) + [4, 4, 2]
    ref_out = ref(xb)
    ref_out.backward(g)
    torch.testing.assert_close(out, ref_out)
    if input_grad:
        torch.testing.assert_close(xa.grad, xb.grad)
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)


def test_groups_and_dilation_are_kept():
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2)
    ours = Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, weight_grad_chunk=3)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(7, 4, 8, 8)
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_matches_autocast_conv():
    ref, ours = _pair(True, padding=1)
    x = torch.randn(10, 4, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref_out = ours(x), ref(x)
    assert out.dtype == ref_out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref_out)
    out.float().square().sum().backward()
    ref_out.float().square().sum().backward()
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-2, atol=2e-2)  # bf16 products either way


@pytest.mark.parametrize("case", ["small batch", "no grad", "frozen weight", "trace", "no chunk", "switched off"])
def test_other_cases_use_the_standard_op(monkeypatch, case):
    if case == "switched off":
        monkeypatch.setenv("ALEXNET_FAST_PATHS", "0")
    conv = Conv2d(4, 6, 3, weight_grad_chunk=None if case == "no chunk" else 4)
    x = torch.randn(3 if case == "small batch" else 10, 4, 9, 9)
    if case == "trace":
        traced = torch.jit.trace(conv, x)
        assert "aten::_convolution" in str(traced.graph) and "PythonOp" not in str(traced.graph)
        return
    counter = _CountBackwardCalls()
    with counter:
        if case == "no grad":
            with torch.no_grad():
                conv(x)
            return
        if case == "frozen weight":
            conv.requires_grad_(False)
            x.requires_grad_()
        conv(x).sum().backward()
    assert counter.batches == [x.shape[0]]  # one backward call over the whole batch


def test_chunk_must_be_positive():
    with pytest.raises(ConfigError, match="weight_grad_chunk"):
        Conv2d(3, 8, 3, weight_grad_chunk=0)


def test_only_the_image_layer_of_imagenet_size_nets_is_sliced():
    paper = create_model("alexnet", num_classes=10)
    chunks = [m.weight_grad_chunk for m in paper.modules() if isinstance(m, Conv2d)]
    assert chunks == [64, None, None, None, None]
    small = create_model("alexnet-small", num_classes=10, in_chans=1, input_size=28)
    assert all(m.weight_grad_chunk is None for m in small.modules() if isinstance(m, Conv2d))


def test_sliced_gradients_under_torch_compile_and_torch_func():
    """The slicing is a traceable autograd.Function: compiled and torch.func gradients are nn.Conv2d's."""
    ref, ours = _pair(True, padding=1)
    x, g = torch.randn(10, 4, 9, 9), torch.randn(10, 6, 9, 9)
    ref(x).backward(g)
    from torch._dynamo.testing import AotEagerAndRecordGraphs

    torch._dynamo.reset()
    backend = AotEagerAndRecordGraphs()
    torch.compile(ours, fullgraph=True, backend=backend)(x).backward(g)
    (backward,) = backend.bw_graphs
    sliced = [n for n in backward.graph.nodes if n.target is torch.ops.aten.convolution_backward.default]
    assert [n.args[1].meta["val"].shape[0] for n in sliced] == [4, 4, 2]  # the compiled backward still slices
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)
    params = {k: p.detach() for k, p in ours.named_parameters()}
    grads = torch.func.grad(lambda p: (torch.func.functional_call(ours, p, (x,)) * g).sum())(params)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(grads[name], q.grad, rtol=1e-5, atol=1e-5)
