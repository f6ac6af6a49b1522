"""Our LRN against torch.nn.LocalResponseNorm (values and gradients), both backends, both layouts."""

import pytest
import torch

from alexnet import kernels
from alexnet.models.lrn import LocalResponseNorm, backend_for, local_response_norm


@pytest.fixture(params=["fused", "torch"])
def backend(request, monkeypatch):
    monkeypatch.setenv("ALEXNET_LRN_BACKEND", request.param)
    return request.param


@pytest.mark.parametrize("size", [5, 3, 4, 9])
@pytest.mark.parametrize("shape", [(2, 96, 13, 13), (3, 7, 5, 6), (2, 3, 4, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_builtin_values_and_grads(backend, size, shape, channels_last):
    torch.manual_seed(0)
    x = (torch.randn(*shape) * 3).relu()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = torch.nn.LocalResponseNorm(size, alpha=1e-2, beta=0.75, k=2.0)
    ours = LocalResponseNorm(size, alpha=1e-2, beta=0.75, k=2.0, convention="per-term")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ref(xa), ours(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    assert backend_for(x) == backend


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6])
def test_betas(backend, beta):
    x = torch.randn(2, 10, 3, 3)
    ref = torch.nn.LocalResponseNorm(5, alpha=0.1, beta=beta, k=1.0)
    torch.testing.assert_close(local_response_norm(x, 5, 0.1, beta, 1.0, "per-term"), ref(x), rtol=1e-5, atol=1e-6)


def test_paper_convention_is_alpha_on_the_sum(backend):
    x = torch.randn(2, 8, 3, 3)
    # paper: k + alpha * sum == torch's k + (alpha*n)/n * sum
    ref = torch.nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0)
    torch.testing.assert_close(local_response_norm(x, convention="paper"), ref(x))
    # and by hand, one element: channel 3 sees channels 1..5
    a = x[0, :, 1, 1].double()
    expected = a[3] / (2 + 1e-4 * (a[1:6] ** 2).sum()) ** 0.75
    assert local_response_norm(x)[0, 3, 1, 1].item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradcheck_double_uses_torch_backend():
    x = torch.randn(1, 6, 2, 2, dtype=torch.float64, requires_grad=True)
    assert backend_for(x) == "torch"
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, 3, 0.5, 0.75, 1.0), (x,))


def test_bad_arguments():
    with pytest.raises(ValueError, match="convention"):
        LocalResponseNorm(convention="caffe")
    with pytest.raises(ValueError, match="N, C"):
        local_response_norm(torch.randn(5, 5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(backend, dtype):
    x = (torch.randn(2, 16, 5, 5) * 2).relu()
    ref = torch.nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0)
    xh = x.to(dtype).requires_grad_()
    y = local_response_norm(xh, 5, 1e-2, 0.75, 2.0, "per-term")
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), ref(xh.detach().float()), rtol=1e-2, atol=1e-2)
    y.float().sum().backward()
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_kernel_keeps_every_non_finite_value_of_the_torch_ops(monkeypatch, dtype, channels_last):
    """The kernel is built with -ffast-math, which lets the compiler assume no NaN or infinity. What
    must survive it: every output (and input gradient) that the torch ops make NaN or infinite is NaN
    or infinite from the kernel too, so a diverging net still ends in a non-finite loss that the
    trainer stops on. (The kernel gives NaN where the torch ops give x / inf = 0 beside an infinity.)"""
    x = torch.randn(2, 16, 5, 5) * 3
    x[0, 3, 2, 2], x[1, 5, 1, 1], x[1, 9, 0, 0] = float("nan"), float("inf"), -float("inf")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 16, 5, 5)
    out = {}
    for name in ("fused", "torch"):
        monkeypatch.setenv("ALEXNET_LRN_BACKEND", name)
        xi = x.to(dtype).requires_grad_()
        y = local_response_norm(xi, 5, 1e-4, 0.75, 2.0)
        y.backward(g.to(dtype))
        out[name] = (y.detach().float(), xi.grad.float())
    for fused, torch_ops in zip(out["fused"], out["torch"]):
        assert (~fused.isfinite())[~torch_ops.isfinite()].all()
        both = fused.isfinite() & torch_ops.isfinite()
        torch.testing.assert_close(fused[both], torch_ops[both], rtol=2e-2, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 48, 9, 9), (2, 7, 3, 5), (1, 2, 4, 4)])
def test_fused_bf16_is_the_float32_result_rounded_once(monkeypatch, shape, channels_last):
    """The kernel reads bf16 and computes in float32 without cast copies; the result must be the
    float32 kernel's on the same (bf16-representable) values, rounded to bf16 once, NaN kept."""
    monkeypatch.setenv("ALEXNET_LRN_BACKEND", "fused")
    torch.manual_seed(1)
    x = (torch.randn(*shape) * 4).bfloat16()
    x[0, 0, 0, 0] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xb, xf = x.clone().requires_grad_(), x.float().requires_grad_()
    yb, yf = local_response_norm(xb, 5, 1e-2, 0.75, 2.0), local_response_norm(xf, 5, 1e-2, 0.75, 2.0)
    assert yb.dtype == torch.bfloat16 and yb.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(yb, yf.bfloat16(), rtol=0, atol=0, equal_nan=True)
    g = torch.randn(shape).bfloat16()
    yb.backward(g)
    yf.backward(g.float())
    assert xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(xb.grad, xf.grad.bfloat16(), rtol=0, atol=0, equal_nan=True)


def test_the_fast_path_switch_turns_the_fused_kernel_off_unless_forced(monkeypatch):
    x = torch.randn(2, 8, 3, 3)
    monkeypatch.delenv("ALEXNET_LRN_BACKEND", raising=False)
    monkeypatch.setenv("ALEXNET_FAST_PATHS", "0")
    assert backend_for(x) == "torch"
    monkeypatch.setenv("ALEXNET_FAST_PATHS", "fused-lrn")
    assert backend_for(x) == ("fused" if kernels.available() else "torch")
    monkeypatch.setenv("ALEXNET_FAST_PATHS", "0")
    monkeypatch.setenv("ALEXNET_LRN_BACKEND", "torch")
    assert backend_for(x) == "torch"
    if kernels.available():  # the LRN's own variable is the more specific choice
        monkeypatch.setenv("ALEXNET_LRN_BACKEND", "fused")
        assert backend_for(x) == "fused"


def test_the_kernel_cache_key_names_the_cpu(monkeypatch, tmp_path):
    """A cache folder shared by machines (a network home) must not hand one CPU another's -march=native binary."""
    sources = {"a.cpp": b"int f();"}
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(kernels, "CPUINFO", cpuinfo)

    def key(flags: str, mhz: int) -> str:
        cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: X\nmodel name\t: Y\ncpu MHz\t\t: {mhz}\nflags\t\t: {flags}\n\n"
                           "processor\t: 1\nflags\t\t: other\n")  # fmt: skip
        return kernels.cache_key(sources)

    assert key("fpu avx2", 2600) == key("fpu avx2", 3100)  # the clock, which varies, is not part of it
    assert key("fpu avx2", 2600) != key("fpu avx2 avx512f", 2600)
    assert "avx512f" in kernels.cpu_signature() and "other" not in kernels.cpu_signature()
    known = key("fpu avx2", 2600)
    cpuinfo.unlink()  # no /proc/cpuinfo (macOS, Windows): the platform's names
    assert kernels.cpu_signature() and kernels.cache_key(sources) != known


def test_the_kernel_cache_key_names_the_torch_installation(monkeypatch, tmp_path):
    """Two virtual environments build into two folders: one shared folder rebuilt on every switch."""
    sources = {"a.cpp": b"int f();"}
    here = kernels.cache_key(sources)
    monkeypatch.setattr(kernels, "torch_location", lambda: str(tmp_path / "other-venv" / "torch"))
    assert kernels.cache_key(sources) != here
