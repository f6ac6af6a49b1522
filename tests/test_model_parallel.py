"""The paper's two-tower split (section 3.2) equals the grouped single-device model."""

import copy

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from alexnet.errors import ConfigError
from alexnet.models import activations, create_model
from alexnet.models.alexnet import CAFFENET, AlexNet
from alexnet.parallel import merge_towers, parse_devices, split_towers


def _grads(model):
    return {k: p.grad for k, p in model.named_parameters()}


def _assert_same_step(grouped, split, x, y):
    """Same logits, loss and gradients (in the grouped layout) for one forward/backward."""
    out_g = grouped(x)
    F.cross_entropy(out_g, y).backward()
    out_s = split(x)
    F.cross_entropy(out_s, y.to(out_s.device)).backward()
    torch.testing.assert_close(out_s.cpu(), out_g, rtol=1e-5, atol=1e-5)
    want, got = _grads(grouped), split.grouped_grads()
    assert list(got) == list(want)
    for k in want:
        scale = float(want[k].abs().max())
        assert scale > 0, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5 * scale, msg=k)


def test_paper_alexnet_split_equals_grouped_outputs_and_gradients():
    # The real `alexnet` (224 input, padded to 227; groups=2 on conv2/4/5); dropout off so the
    # two models draw no random masks; inputs scaled like mean-subtracted pixels so LRN matters.
    grouped = create_model("alexnet", num_classes=10, dropout=0.0)
    split = split_towers(grouped, ("cpu", "cpu"))
    x = torch.randn(2, 3, 224, 224) * 60
    _assert_same_step(grouped, split, x, torch.tensor([1, 7]))
    assert [k for k, _ in split.plan].count("norm1") == 1 and split.head_plan[-1] == ("fc8", "fc-last")
    assert sum(p.numel() for p in split.parameters()) == sum(p.numel() for p in grouped.parameters())


@pytest.mark.parametrize("arch,size", [("caffenet", 227), ("alexnet-small", 28)])
def test_other_paper_family_models(arch, size):
    # caffenet puts LRN after the pool; alexnet-small is the 28 px net with 1 channel.
    if arch == "caffenet":  # CaffeNet's layout and LRN constants at reduced widths, to stay fast
        grouped = AlexNet(replace(CAFFENET, num_classes=10, dropout=0.0, widths=(48, 64, 96, 96, 64), fc=(256, 256)))
        assert [n for n in grouped.features._modules][:4] == ["conv1", "act1", "pool1", "norm1"]
    else:
        grouped = create_model(arch, num_classes=10, dropout=0.0)
    split = split_towers(grouped, "cpu,cpu")
    x = torch.randn(3, 3 if arch == "caffenet" else 1, size, size) * 60
    _assert_same_step(grouped, split, x, torch.tensor([0, 4, 9]))


def test_lrn_exchange_is_what_makes_the_boundary_maps_equal():
    """The grouped LRN window crosses the tower boundary (maps 46|47 see 48|49); the paper's
    per-GPU LRN does not. With the exchange the split equals the grouped net; without it,
    exactly the n//2 maps on each side of the boundary differ."""
    grouped = create_model("alexnet-small", num_classes=10, widths=(16, 32, 48, 48, 32), fc=(64, 64)).eval()
    x = torch.randn(2, 1, 28, 28) * 60
    seen = {"grouped": activations(grouped, x, ["features.norm1"])["features.norm1"]}
    for exchange in (True, False):
        split = split_towers(grouped, ("cpu", "cpu"), lrn_exchange=exchange).eval()
        split.towers[0]["norm1"].register_forward_hook(lambda m, i, o: seen.__setitem__("a", o.clone()))
        split.towers[1]["norm1"].register_forward_hook(lambda m, i, o: seen.__setitem__("b", o.clone()))
        with torch.no_grad():
            grouped(x), split(x)
        if exchange:  # each tower normalised its maps plus the 2 neighbours it received
            tower = torch.cat([seen["a"][:, :8], seen["b"][:, 2:]], 1)
            torch.testing.assert_close(tower, seen["grouped"])
        else:
            tower = torch.cat([seen["a"], seen["b"]], 1)
            differs = ((tower - seen["grouped"]).abs().amax(dim=(0, 2, 3)) > 0).nonzero().flatten().tolist()
            assert differs == [6, 7, 8, 9]


def test_optimizer_state_and_weights_convert_both_ways():
    torch.manual_seed(0)
    grouped = create_model("alexnet-small", num_classes=10, widths=(16, 32, 48, 48, 32), fc=(64, 64), dropout=0.0)
    split = split_towers(grouped, ("cpu", "cpu"))
    opt_g = torch.optim.SGD(grouped.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt_s = torch.optim.SGD(split.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    data = [(torch.randn(4, 1, 28, 28) * 60, torch.randint(0, 10, (4,))) for _ in range(2)]

    def step(model, opt, x, y):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    x, y = data[0]
    step(grouped, opt_g, x, y)
    step(split, opt_s, x, y)
    for k, v in grouped.state_dict().items():
        torch.testing.assert_close(split.grouped_state_dict()[k], v, rtol=1e-4, atol=1e-6)
    state = split.grouped_optimizer_state(opt_s)
    ref = opt_g.state_dict()
    assert state["param_groups"] == ref["param_groups"]
    for i, entry in ref["state"].items():
        torch.testing.assert_close(state["state"][i]["momentum_buffer"], entry["momentum_buffer"], rtol=1e-4, atol=1e-6)

    # Resume: a fresh split model and optimizer from the grouped checkpoint continue identically.
    resumed = split_towers(copy.deepcopy(grouped), ("cpu", "cpu"))
    resumed.load_grouped_state_dict(grouped.state_dict())
    opt_r = torch.optim.SGD(resumed.parameters(), lr=0.5)
    resumed.load_grouped_optimizer_state(opt_r, ref)
    assert opt_r.param_groups[0]["lr"] == 0.01
    x, y = data[1]
    step(grouped, opt_g, x, y)
    step(resumed, opt_r, x, y)
    merged = merge_towers(resumed)
    for k, v in grouped.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[k], v, rtol=1e-4, atol=1e-6)


def test_data_parallel_wraps_the_split_model(tmp_path):
    """DDP over processes, each driving one tower pair: DDP takes a multi-device module with
    device_ids=None. One gloo process here; gradients still go through DDP's all-reduce."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        grouped = create_model("alexnet-small", num_classes=10, widths=(16, 32, 48, 48, 32), fc=(64, 64), dropout=0.0)
        ddp = torch.nn.parallel.DistributedDataParallel(split_towers(grouped, ("cpu", "cpu")), device_ids=None)
        x, y = torch.randn(4, 1, 28, 28) * 60, torch.tensor([0, 1, 2, 3])
        F.cross_entropy(grouped(x), y).backward()
        F.cross_entropy(ddp(x), y).backward()
        for k, g in _grads(grouped).items():
            torch.testing.assert_close(ddp.module.grouped_grads()[k], g, rtol=1e-4, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_parse_devices_and_refusals():
    assert parse_devices("cpu,cpu") == ("cpu", "cpu")
    assert parse_devices(" cpu , cpu ") == ("cpu", "cpu")
    for bad in ("cpu", "cpu,cpu,cpu", "cpu,", "gpu0,gpu1"):
        with pytest.raises(ConfigError):
            parse_devices(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            parse_devices("cuda:0,cuda:1")
    with pytest.raises(ConfigError, match="paper's family"):
        split_towers(create_model("alexnet-owt", num_classes=10), ("cpu", "cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_split_across_devices_on_cuda():
    # Two GPUs where a machine has them; otherwise the CPU and one GPU, which crosses devices too.
    devices = ("cuda:0", "cuda:1") if torch.cuda.device_count() > 1 else ("cpu", "cuda:0")
    grouped = create_model("alexnet", num_classes=10, dropout=0.0)
    split = split_towers(grouped, devices)
    assert {p.device.type for p in split.towers[1].parameters()} == {torch.device(devices[1]).type}
    x = torch.randn(2, 3, 224, 224) * 60
    _assert_same_step(grouped, split, x, torch.tensor([1, 7]))
