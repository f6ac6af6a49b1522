"""The paper's update rule (section 5) and the plateau schedule."""

import math

import pytest
import torch

from alexnet import kernels
from alexnet.config import OptimConfig, load_config
from alexnet.errors import ConfigError
from alexnet.train.optim import PaperSGD, Schedule, set_lr


def test_paper_rule_by_hand_across_an_lr_drop():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    grads = [torch.tensor([0.5, 0.25]), torch.tensor([-1.0, 0.5]), torch.tensor([0.2, 0.2])]
    lrs = [0.1, 0.1, 0.01]  # divided by 10 before the third step
    w_hand, v_hand = [1.0, -2.0], [0.0, 0.0]
    for g, lr in zip(grads, lrs):
        set_lr(opt, lr)
        w.grad = g.clone()
        opt.step()
        for i in range(2):  # v <- 0.9 v - 0.0005 lr w - lr g ; w <- w + v   (wd 0.01 here)
            v_hand[i] = 0.9 * v_hand[i] - 0.01 * lr * w_hand[i] - lr * g[i].item()
            w_hand[i] = w_hand[i] + v_hand[i]
        assert w.tolist() == pytest.approx(w_hand, rel=1e-6)
    # torch.optim.SGD agrees before the drop and differs after it (lr outside the velocity)
    a = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    b = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    pa = PaperSGD([a], lr=0.1, momentum=0.9, weight_decay=0.01)
    pb = torch.optim.SGD([b], lr=0.1, momentum=0.9, weight_decay=0.01)
    for k, (g, lr) in enumerate(zip(grads, lrs)):
        set_lr(pa, lr), set_lr(pb, lr)
        a.grad, b.grad = g.clone(), g.clone()
        pa.step(), pb.step()
        if k < 2:
            torch.testing.assert_close(a, b)
    assert (a - b).abs().max() > 1e-3


def test_paper_rule_equals_torch_sgd_at_constant_lr():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(a.detach().clone())
    pa = PaperSGD([a], lr=0.05, momentum=0.9, weight_decay=5e-4)
    pb = torch.optim.SGD([b], lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(10):
        g = torch.randn(5)
        a.grad, b.grad = g.clone(), g.clone()
        pa.step()
        pb.step()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _paper_run(params, grads, lrs):
    opt = PaperSGD(params, lr=lrs[0], momentum=0.9, weight_decay=5e-4)
    for g, lr in zip(grads, lrs):
        set_lr(opt, lr)
        for p, gp in zip(params, g):
            p.grad = gp.clone()
        opt.step()
    return [opt.state[p]["velocity"] for p in params]


def test_one_pass_kernel_equals_the_foreach_path(monkeypatch):
    if not kernels.available():
        pytest.skip("C++ kernels not built on this machine")
    torch.manual_seed(0)
    shapes = [(96, 3, 11, 11), (96,), (4096, 300), (7,)]  # a conv weight, biases, more than one work item
    start = [torch.randn(s) for s in shapes]
    start[0] = start[0].contiguous(memory_format=torch.channels_last)  # kernel keeps any dense layout
    grads = [[torch.randn(s).contiguous(memory_format=torch.channels_last) if len(s) == 4 else torch.randn(s)
              for s in shapes] for _ in range(3)]  # fmt: skip
    lrs = [0.01, 0.01, 0.001]
    calls = []
    real = kernels.load().paper_sgd_
    module = type("M", (), {"paper_sgd_": staticmethod(lambda *a: calls.append(1) or real(*a))})
    monkeypatch.setattr(kernels, "load", lambda: module)
    fast = [torch.nn.Parameter(t.clone()) for t in start]
    v_fast = _paper_run(fast, grads, lrs)
    assert len(calls) == 3  # the kernel did the work
    monkeypatch.setattr("alexnet.train.optim._one_pass", lambda *a: False)
    slow = [torch.nn.Parameter(t.clone()) for t in start]
    v_slow = _paper_run(slow, grads, lrs)
    for a, b, va, vb in zip(fast, slow, v_fast, v_slow):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-8)


def test_one_pass_kernel_is_skipped_for_other_dtypes():
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=0.0)
    w.grad = torch.ones(4, dtype=torch.float64)
    opt.step()  # float64: the foreach path
    assert w.tolist() == [0.9] * 4 and w.dtype == torch.float64


def test_optimizer_state_round_trip():
    w = torch.nn.Parameter(torch.ones(3))
    opt = PaperSGD([w])
    w.grad = torch.ones(3)
    opt.step()
    state = opt.state_dict()
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = PaperSGD([w2])
    opt2.load_state_dict(state)
    torch.testing.assert_close(opt2.state[w2]["velocity"], opt.state[w]["velocity"])


def test_plateau_divides_by_ten_at_most_three_times_then_finishes():
    s = Schedule(OptimConfig(lr=0.01, schedule="plateau", plateau_patience=1, max_drops=3), steps_per_epoch=10, epochs=90)
    assert s.lr(0) == 0.01
    assert not s.on_validation(0.50)  # first: best
    assert not s.on_validation(0.40)  # improving
    assert s.on_validation(0.40)  # no improvement -> drop 1
    assert s.lr(100) == pytest.approx(0.001)
    assert not s.on_validation(0.30)
    assert s.on_validation(0.3000001)  # below threshold: drop 2
    assert s.on_validation(0.31)  # drop 3
    assert s.lr(5) == pytest.approx(1e-5)
    assert not s.finished
    assert not s.on_validation(0.31)  # a fourth plateau: no more drops, the run is done
    assert s.finished and s.drops == 3
    restored = Schedule(OptimConfig(), 10, 90)
    restored.load_state_dict(s.state_dict())
    assert restored.lr(0) == pytest.approx(1e-5)


def test_patience():
    s = Schedule(OptimConfig(schedule="plateau", plateau_patience=2), 1, 1)
    s.on_validation(0.5)
    assert not s.on_validation(0.6)
    assert s.on_validation(0.6)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "step", "constant"])
def test_step_schedules_with_warmup(schedule):
    cfg = OptimConfig(lr=0.1, schedule=schedule, warmup_epochs=1, step_epochs=2)
    s = Schedule(cfg, steps_per_epoch=10, epochs=4)
    assert s.lr(0) == pytest.approx(0.01)  # warm-up from lr/10 steps
    assert s.lr(9) == pytest.approx(0.1)
    lrs = [s.lr(i) for i in range(40)]
    assert all(v > 0 or schedule in ("cosine", "onecycle") for v in lrs)
    if schedule in ("cosine", "onecycle"):
        assert lrs[-1] < 0.01 and all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))
    if schedule == "step":
        assert s.lr(25) == pytest.approx(0.01)


def test_presets_and_config_errors():
    paper = load_config("paper")
    assert (paper.batch_size, paper.optim.name, paper.optim.lr, paper.optim.momentum, paper.optim.weight_decay) == (
        128, "paper-sgd", 0.01, 0.9, 5e-4)
    assert (paper.optim.schedule, paper.optim.max_drops, paper.epochs, paper.data.crop) == ("plateau", 3, 90, 224)
    assert paper.data.lighting == 0.1 and paper.data.mean == "image"
    with pytest.raises(ConfigError, match="unknown config key optim.lrr"):
        load_config("paper", overrides=["optim.lrr=1"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config("paper", overrides=["epochs=ten"])
    with pytest.raises(ConfigError, match="true or false"):
        load_config("paper", overrides=["channels_last=1"])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("imagenet-fast")
    assert math.isclose(load_config("demo", overrides=["optim.lr=0.2"]).optim.lr, 0.2)
