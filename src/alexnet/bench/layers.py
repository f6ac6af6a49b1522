"""Per layer: where a training step's time goes, for our model and a baseline layout.

Every conv, linear, locally connected, LRN and max-pool layer of the model is timed alone on the
input it gets inside the model (captured from one forward pass, in channels_last when the model
runs so): its forward, and its forward + backward (gradients for its weights and for its input,
except at the first layer, whose input gradient a training step never computes). The layers are
timed round-robin with warm-up, medians reported. Multiply-adds come from `alexnet summary`;
GMAC/s counts the forward's multiply-adds once and the backward's twice (input and weight
gradients; once at the first layer). The whole model's forward + backward is timed as well, so
what the listed layers leave out (ReLU, dropout, the loss) shows as the rest.

The baseline (default `alexnet-owt`, torchvision's layout) goes through the same code, so the two
tables say layer by layer why one model's step is faster than the other's.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn as nn

from ..models import LocalResponseNorm, create_model, input_config
from ..models.layers import LocallyConnected2d
from ..runtime import environment, tune_allocator
from ..summary import summarize
from .timing import alternate

TIMED = (nn.Conv2d, nn.Linear, LocallyConnected2d, LocalResponseNorm, nn.MaxPool2d)
WEIGHTED = (nn.Conv2d, nn.Linear, LocallyConnected2d)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="alexnet", help="our model (default alexnet)")
    p.add_argument("--baseline", default="alexnet-owt", help="a second model to compare with, or none (default alexnet-owt)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)


def _timed_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, module, the input it gets) for each timed leaf module, in forward order."""
    found: list[tuple[str, nn.Module, torch.Tensor]] = []
    handles = [m.register_forward_pre_hook(lambda m, inp, name=name: found.append((name, m, inp[0].detach().clone())))
               for name, m in model.named_modules() if isinstance(m, TIMED) and not list(m.children())]  # fmt: skip
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def _train_call(module: nn.Module, inp: torch.Tensor, first: bool) -> Any:
    x = inp if first else inp.detach().requires_grad_(True)
    grad = torch.ones_like(module(inp))

    def call() -> None:
        module.zero_grad(set_to_none=True)
        module(x).backward(grad)

    return call


def measure(arch: str, model: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    declared = input_config(model)
    size = declared.input_size
    macs = {r.name: r.macs for r in summarize(model, size).rows}
    x = torch.randn(args.batch, declared.in_chans, size, size).to(memory_format=fmt)
    layers = _timed_layers(model, x)

    def whole() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    calls: dict[str, Any] = {"(whole model)": whole}
    for i, (name, module, inp) in enumerate(layers):
        calls[f"{name} fwd"] = lambda module=module, inp=inp: module(inp)
        calls[f"{name} train"] = _train_call(module, inp, first=i == 0)
    times = alternate(calls, warmup=args.warmup, repeats=args.repeats)
    rows = []
    for i, (name, module, inp) in enumerate(layers):
        fwd, train = times[f"{name} fwd"]["median_s"], times[f"{name} train"]["median_s"]
        work = macs.get(name, 0) * args.batch * (2 if i == 0 else 3) if isinstance(module, WEIGHTED) else 0
        rows.append({"layer": name, "kind": type(module).__name__, "input": list(inp.shape[1:]),
                     "macs_per_image": macs.get(name, 0), "forward_ms": 1e3 * fwd, "train_ms": 1e3 * train,
                     "gmacs_per_s": work / train / 1e9 if work else None})  # fmt: skip
    return {"arch": arch, "rows": rows, "whole_ms": 1e3 * times["(whole model)"]["median_s"],
            "layers_ms": sum(r["train_ms"] for r in rows)}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    tune_allocator()  # as `alexnet train` runs
    archs = [args.arch] + ([] if args.baseline in ("", "none", args.arch) else [args.baseline])
    torch.manual_seed(0)
    # both built before anything is timed: a misspelt --baseline fails at once, not after the first model's minutes
    models = {a: create_model(a) for a in archs}  # at their own number of classes (1000 for the ImageNet nets)
    return {"models": [measure(a, m, args) for a, m in models.items()], "batch": args.batch, "repeats": args.repeats,
            "warmup": args.warmup, "channels_last": args.channels_last, "env": environment("cpu")}  # fmt: skip


def format_result(r: dict[str, Any]) -> str:
    lines = [f"per layer, batch {r['batch']}, {'channels_last' if r['channels_last'] else 'NCHW'}, fp32, "
             f"median of {r['repeats']} (forward; forward + backward):"]  # fmt: skip
    for m in r["models"]:
        lines += ["", f"{m['arch']}:", f"  {'layer':<22} {'kind':<18} {'input':<16} {'M mult-adds':>11} {'fwd ms':>8} "
                  f"{'train ms':>9} {'GMAC/s':>7} {'share':>6}"]  # fmt: skip
        for row in m["rows"]:
            gm = f"{row['gmacs_per_s']:.0f}" if row["gmacs_per_s"] else "-"
            lines.append(f"  {row['layer']:<22} {row['kind']:<18} {'x'.join(map(str, row['input'])):<16} "
                         f"{row['macs_per_image'] / 1e6:>11.1f} {row['forward_ms']:>8.1f} {row['train_ms']:>9.1f} {gm:>7} "
                         f"{100 * row['train_ms'] / m['whole_ms']:>5.1f}%")  # fmt: skip
        lines.append(f"  the listed layers {m['layers_ms']:.0f} ms of the whole model's forward + backward "
                     f"{m['whole_ms']:.0f} ms; the rest (ReLU, dropout, glue) {m['whole_ms'] - m['layers_ms']:.0f} ms")  # fmt: skip
    if len(r["models"]) == 2:
        a, b = r["models"]
        lines += ["", f"{a['arch']} / {b['arch']} forward + backward time: {a['whole_ms'] / b['whole_ms']:.2f}x"]
        for kind, label in (("Conv2d", "conv"), ("LocalResponseNorm", "LRN"), ("MaxPool2d", "max-pool"), ("Linear", "linear")):
            ta, tb = (sum(x["train_ms"] for x in m["rows"] if x["kind"] == kind) for m in (a, b))
            lines.append(f"  {label:<9} {ta:>7.0f} ms against {tb:>7.0f} ms")
    return "\n".join(lines)
