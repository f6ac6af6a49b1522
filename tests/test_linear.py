"""The fully connected layer: nn.Linear's results, with float32 CPU products in oneDNN."""

import pytest
import torch
from torch import nn

from alexnet.errors import ConfigError
from alexnet.models import create_model, layers
from alexnet.models.layers import Linear

needs_onednn = pytest.mark.skipif(layers._LINEAR_OP is None, reason="torch built without oneDNN")


def _count_calls(monkeypatch):
    calls = []
    real = layers._LINEAR_OP
    monkeypatch.setattr(layers, "_LINEAR_OP", lambda *a: calls.append(a[0].shape) or real(*a))
    return calls


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_nn_linear(monkeypatch, bias):
    torch.manual_seed(0)
    ref = nn.Linear(300, 70, bias=bias)
    ours = Linear(300, 70, bias=bias)
    ours.load_state_dict(ref.state_dict())  # same parameters, same state-dict keys
    x = torch.randn(9, 300)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(9, 70)
    calls = _count_calls(monkeypatch)
    out = ours(xa)
    out.backward(g)
    assert calls == [(9, 300), (9, 70), (70, 9)]  # forward, input gradient, weight gradient
    ref(xb).backward(g)
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_frozen_input_skips_the_input_gradient(monkeypatch):
    layer = Linear(20, 5)
    calls = _count_calls(monkeypatch)
    layer(torch.randn(4, 20)).sum().backward()  # the image-side input needs no gradient
    assert calls == [(4, 20), (5, 4)]  # forward and weight gradient
    assert layer.weight.grad is not None and layer.bias.grad is not None


@pytest.mark.parametrize("case", ["float64", "autocast", "trace", "3-d", "switched off", "export"])
def test_other_cases_use_the_standard_op(monkeypatch, case):
    layer = Linear(16, 4)
    calls = _count_calls(monkeypatch) if layers._LINEAR_OP is not None else []
    x = torch.randn(3, 16)
    if case == "switched off":
        monkeypatch.setenv("ALEXNET_FAST_PATHS", "0")
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    elif case == "export":  # an exported graph holds the standard op
        program = torch.export.export(layer, (x,))
        assert "aten.linear.default" in {str(n.target) for n in program.graph.nodes}
        calls.clear()  # (the exporter's own eager check call)
    elif case == "float64":
        out = layer.double()(x.double())
        assert out.dtype == torch.float64
    elif case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        assert out.dtype == torch.bfloat16
    elif case == "trace":
        traced = torch.jit.trace(layer, x)
        assert "aten::linear" in str(traced.graph)
        torch.testing.assert_close(traced(x), layer(x))
    else:
        assert layer(torch.randn(2, 3, 16)).shape == (2, 3, 4)
    assert calls == [] or case == "trace"  # the trace's own check call runs eagerly


def test_paper_model_uses_it_for_every_fc_layer():
    model = create_model("alexnet")
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(fcs) == 3 and all(isinstance(m, Linear) for m in fcs)
    assert list(model.state_dict())[-2:] == ["classifier.fc8.weight", "classifier.fc8.bias"]


def test_the_switch_names_fast_paths_and_refuses_unknown_ones(monkeypatch):
    x = torch.randn(3, 16)
    monkeypatch.setenv("ALEXNET_FAST_PATHS", "onednn-linear, bit-dropout")
    assert layers.fast_paths_enabled() == {"onednn-linear", "bit-dropout"}
    assert layers.fast_path("onednn-linear", x) and not layers.fast_path("fused-lrn", x)
    monkeypatch.setenv("ALEXNET_FAST_PATHS", "onednn-linaer")
    with pytest.raises(ConfigError, match="unknown fast path onednn-linaer; valid: conv-weight-grad-slices"):
        layers.fast_paths_enabled()
    try:
        layers.set_fast_paths(False)  # the function beats the variable
        assert layers.fast_paths_enabled() == frozenset()
        layers.set_fast_paths(["fused-lrn"])
        assert layers.fast_paths_enabled() == {"fused-lrn"}
    finally:
        layers.set_fast_paths(None)
    monkeypatch.delenv("ALEXNET_FAST_PATHS")
    assert layers.fast_paths_enabled() == set(layers.FAST_PATHS)
