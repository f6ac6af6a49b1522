"""A preset's whole training step on real data, phase by phase: our LRN kernel against the torch-op LRN.

What `alexnet train` does per step (loader batch, augmentation, forward, backward, optimizer),
with the same Trainer, data and settings, timed per phase. The baseline is the same step with
the LRN composed of torch ops (`ALEXNET_LRN_BACKEND=torch`, the path every non-CPU device
takes), alternating step by step in one process so drift hits both alike. `--profile` adds
torch.profiler's top operators for a few steps of ours: where the rest of the time goes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.profiler import profile

from ..config import load_config
from ..errors import ConfigError
from ..runtime import environment
from ..train.loop import Trainer

PHASES = ("load", "augment", "forward", "backward", "optimizer")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared dataset folder (e.g. data/fashion-mnist)")
    p.add_argument("--preset", default="demo", help="training preset (default demo)")
    p.add_argument("--repeats", type=int, default=12, help="timed steps per candidate (default 12)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also list the top operators of 5 steps (torch.profiler)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings, as for `alexnet train`")


@contextmanager
def _lrn_backend(name: str) -> Iterator[None]:
    old = os.environ.get("ALEXNET_LRN_BACKEND")
    os.environ["ALEXNET_LRN_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ALEXNET_LRN_BACKEND", None)
        else:
            os.environ["ALEXNET_LRN_BACKEND"] = old


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--repeats must be >= 1 and --warmup >= 0")
    cfg = load_config(args.preset, None, list(args.overrides))
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-step-") as tmp:
        tr = Trainer(cfg, args.data, tmp, progress=False)
        dev = tr.device
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        gen = torch.Generator(device=dev)
        batches = _forever(tr.loader)
        autocast = tr.autocast

        def step(k: int) -> dict[str, float]:
            t = [time.perf_counter()]
            images, labels = next(batches)
            images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
            sync(), t.append(time.perf_counter())
            gen.manual_seed(k)
            x = tr.train_tf(images, gen).contiguous(memory_format=tr.memory_format)
            sync(), t.append(time.perf_counter())
            with torch.autocast(dev.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                logits = tr.net(x)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.optim.label_smoothing)
            sync(), t.append(time.perf_counter())
            tr.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sync(), t.append(time.perf_counter())
            tr.optimizer.step()
            sync(), t.append(time.perf_counter())
            return {p: t[i + 1] - t[i] for i, p in enumerate(PHASES)}

        tr.net.train()
        candidates = {"alexnet (fused LRN)": "auto", "torch-op LRN (baseline)": "torch"}
        times: dict[str, list[dict[str, float]]] = {name: [] for name in candidates}
        k = 0
        for name, backend in candidates.items():
            with _lrn_backend(backend):
                for _ in range(args.warmup):
                    step(k := k + 1)
        for _ in range(args.repeats):
            for name, backend in candidates.items():
                with _lrn_backend(backend):
                    times[name].append(step(k := k + 1))
        profile = _profile(step, k) if args.profile else None
    batch = cfg.batch_size
    results = {}
    for name, ts in times.items():
        phases = {p: statistics.median(t[p] for t in ts) for p in PHASES}
        total = statistics.median(sum(t.values()) for t in ts)
        results[name] = {"phases_ms": {p: 1e3 * v for p, v in phases.items()}, "step_ms": 1e3 * total,
                         "images_per_s": batch / total, "repeats": len(ts)}  # fmt: skip
    ours, base = (results[n]["images_per_s"] for n in candidates)
    return {"benchmark": "training step by phase", "preset": args.preset, "overrides": list(args.overrides),
            "arch": cfg.model.arch, "batch": batch, "precision": tr.cfg.precision, "channels_last": cfg.channels_last,
            "results": results, "ratio": ours / base, "profile": profile, "env": environment(dev)}  # fmt: skip


def _forever(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        yield from loader.epoch_batches(epoch)
        epoch += 1


def _profile(step: Any, k: int) -> list[dict[str, Any]]:
    with profile() as prof:
        for i in range(5):
            step(k + 1 + i)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    return [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / 5, "calls_per_step": e.count / 5}
            for e in rows]  # fmt: skip


def format_result(r: dict[str, Any]) -> str:
    lines = [f"{r['benchmark']}: preset {r['preset']} {' '.join(r['overrides'])}".rstrip()
             + f" ({r['arch']}, batch {r['batch']}, {r['precision']}, "
             f"{'channels_last' if r['channels_last'] else 'NCHW'}; {r['env']['device']}, {r['env']['torch_threads']} threads)",
             f"  {'candidate':<26} " + " ".join(f"{p:>9}" for p in PHASES) + "   step ms   images/s"]  # fmt: skip
    for name, s in r["results"].items():
        cells = " ".join(f"{s['phases_ms'][p]:9.1f}" for p in PHASES)
        lines.append(f"  {name:<26} {cells} {s['step_ms']:9.1f} {s['images_per_s']:10.0f}")
    lines.append(f"  ours / baseline: {r['ratio']:.2f}x (medians of {next(iter(r['results'].values()))['repeats']} alternating steps)")
    if r["profile"]:
        lines.append("  top operators of ours (self time per step):")
        for row in r["profile"]:
            lines.append(f"    {row['op']:<48} {row['self_ms_per_step']:8.1f} ms  x{row['calls_per_step']:.0f}")
    return "\n".join(lines)
