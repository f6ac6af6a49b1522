"""Dropout at p = 0.5 from random bits: the paper's dropout (section 4.2), drawn faster."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from alexnet.models import create_model
from alexnet.models.layers import Dropout


class _Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_each_unit_is_kept_with_probability_one_half_and_scaled_by_two():
    torch.manual_seed(0)
    x = torch.ones(256, 4096)
    out = Dropout(0.5).train()(x)
    assert set(out.unique().tolist()) == {0.0, 2.0}
    kept = (out > 0).double()
    # 1M units: the fraction kept is 1/2 within 5 standard deviations (0.0025)
    assert kept.mean().item() == pytest.approx(0.5, abs=0.0025)
    # neighbouring units (bits of one word, and across words) are independent: P(both kept) = 1/4
    assert (kept[:, 1:] * kept[:, :-1]).mean().item() == pytest.approx(0.25, abs=0.0025)
    assert (kept[:, 64:] * kept[:, :-64]).mean().item() == pytest.approx(0.25, abs=0.0025)
    # every unit of a row is used: no periodic pattern from the 64-bit words
    per_column = kept.mean(0)
    assert per_column.min().item() > 0.35 and per_column.max().item() < 0.65


def test_the_seed_fixes_the_mask_and_the_gradient_is_the_mask():
    x = torch.randn(3, 100, requires_grad=True)
    torch.manual_seed(1)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(1)
    b = Dropout(0.5).train()(x)
    torch.testing.assert_close(a, b)
    a.sum().backward()
    torch.testing.assert_close(x.grad, (a != 0).float() * 2)
    # an odd number of units (not a multiple of 64) and bf16 activations
    odd = Dropout(0.5).train()(torch.ones(5, 7, dtype=torch.bfloat16))
    assert odd.dtype == torch.bfloat16 and set(odd.unique().tolist()) <= {0.0, 2.0}


@pytest.mark.parametrize("case", ["eval", "p=0.3", "inplace", "switched off"])
def test_other_cases_are_torch_dropout(monkeypatch, case):
    if case == "switched off":
        monkeypatch.setenv("ALEXNET_FAST_PATHS", "0")
    layer = Dropout(0.3 if case == "p=0.3" else 0.5, inplace=case == "inplace")
    layer.train(case != "eval")
    x = torch.randn(4, 64)
    torch.manual_seed(2)
    ops = _Ops()
    with ops:
        out = layer(x.clone())
    torch.manual_seed(2)
    ref = nn.Dropout(layer.p, inplace=layer.inplace).train(case != "eval")(x.clone())
    torch.testing.assert_close(out, ref)
    assert "randint.low" not in ops.names


def test_paper_model_drops_with_it():
    model = create_model("alexnet", num_classes=10)
    assert [type(m) for m in model.classifier if isinstance(m, nn.Dropout)] == [Dropout, Dropout]
