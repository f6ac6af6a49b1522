"""A benchmark candidate in its own process: `python -m alexnet.bench.worker SPEC_JSON`.

Process-wide settings (the allocator setting, threads, compile caches) differ between
candidates, so each lives in its own process; the parent alternates between them
(bench/harness.py). Protocol on stdin/stdout, one line each: "step N" -> seconds for N steps as
JSON; "quit".

What a spec names:
- "model": "alexnet" is this package's model (create_model with the spec's arch and options),
  stepped by the optimizer `alexnet train` uses by default (the paper's update rule,
  train/optim.py); "torchvision" (torchvision's AlexNet layout: 64-192-384-256-256, no LRN, no
  groups) and "naive-paper" (the paper's net with groups=2 and torch.nn.LocalResponseNorm) are
  written here in plain PyTorch, as a user would write them, and step torch.optim.SGD;
  "peak" is the machine's fp32 ceiling measured in the same run: the paper's conv3 (256 -> 384,
  3x3, 13x13), the most GEMM-like layer, forward only; its rate in FLOP/s bounds every step.
- "malloc_fix": call alexnet.runtime.tune_allocator() first (what the CLI does); "channels_last":
  model and input in channels_last. Any model takes either, so a row can differ from another in
  one setting only (bench/train.py names the rows). "fast_paths": false switches the package's
  CPU fast paths off (models/layers.py).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig
from ..models import create_model, input_config
from ..models.layers import set_fast_paths
from ..runtime import compile_model, tune_allocator
from ..train.optim import make_optimizer


def torchvision_style(num_classes: int = 1000) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(9216, 4096), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes),
    )  # fmt: skip


def naive_paper(num_classes: int = 1000) -> nn.Module:
    lrn = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)  # alpha*n: the paper's alpha on the sum
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, 4), nn.ReLU(inplace=True), nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True), nn.LocalResponseNorm(**lrn),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4096, num_classes),
    )  # fmt: skip


PEAK_CONV = {"in_channels": 256, "out_channels": 384, "kernel_size": 3, "padding": 1}
PEAK_SIZE = 13


def peak_flops_per_image() -> float:
    """Floating-point operations of one image through the peak probe (2 per multiply-add)."""
    c = PEAK_CONV
    return 2.0 * PEAK_SIZE * PEAK_SIZE * c["out_channels"] * c["in_channels"] * c["kernel_size"] ** 2


def build(spec: dict[str, Any]) -> tuple[nn.Module, int, int]:
    """The model a spec names, with its input's channels and side."""
    kind = spec["model"]
    if kind == "peak":
        return nn.Conv2d(**PEAK_CONV), PEAK_CONV["in_channels"], PEAK_SIZE
    if kind == "torchvision":
        return torchvision_style(), 3, 224
    if kind == "naive-paper":
        return naive_paper(), 3, 227
    model = create_model(spec.get("arch", "alexnet"), **spec.get("options", {}))
    declared = input_config(model)
    return model, declared.in_chans, declared.input_size


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec.get("malloc_fix"):
        tune_allocator()
    if spec.get("fast_paths") is not None:  # False: all off; a list: only those on
        set_fast_paths(spec["fast_paths"] if isinstance(spec["fast_paths"], list) else bool(spec["fast_paths"]))
    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    device = torch.device(spec.get("device", "cpu"))
    model, in_chans, size = build(spec)
    model = model.to(device)
    batch, mode = int(spec["batch"]), spec["mode"]  # "train" or "infer"
    x = torch.randn(batch, in_chans, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if spec.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if spec.get("bf16") else None
    net = compile_model(model) if spec.get("compile") else model
    if spec["model"] == "alexnet":  # a small lr keeps the fixed batch's steps from drifting anywhere odd
        opt = make_optimizer(model.parameters(), OptimConfig(lr=1e-4))
    else:
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def one() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if mode == "train":
                loss = nn.functional.cross_entropy(net(x).float(), y)
            else:
                with torch.inference_mode():
                    net(x)
                return
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if mode == "train":
        model.train()
    else:
        model.eval()
    print(json.dumps({"ready": True, "input": list(x.shape)}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        n = int(cmd[1])
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            one()
        sync()
        print(json.dumps({"seconds": (time.perf_counter() - t0) / n}), flush=True)


if __name__ == "__main__":
    main()
