"""A preset's whole training step on real data, phase by phase: our LRN kernel against the torch-op LRN,
or the preset against variants of its settings (`--vs`), to choose a recipe for a CPU by images/s.

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
    p.add_argument("--vs", action="append", default=[], metavar="'KEY=VALUE ...'",
                   help="another candidate: the same settings with these overrides on top, alternating step by step "
                        "with the first (repeatable; replaces the torch-op LRN baseline). Compare recipes per image: "
                        "--vs 'batch_size=256 optim.lr=0.1'")  # fmt: skip
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


def _timed_step(tr: Trainer) -> Any:
    """step(k): one training step of `tr` on its next batch (augmentation seeded by k), timed per phase."""
    dev, cfg = tr.device, tr.cfg
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    batches = _forever(tr.loader)
    autocast = tr.autocast

    def step(k: int) -> dict[str, float]:
        t = [time.perf_counter()]
        images, labels = next(batches)
        images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        sync(), t.append(time.perf_counter())
        x = tr.train_tf(images, cfg.seed, k).contiguous(memory_format=tr.memory_format)
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
    return step


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError("--repeats must be >= 1 and --warmup >= 0")
    cfg = load_config(args.preset, None, list(args.overrides))
    # (name, settings, LRN backend): ours against the torch-op LRN, or against each --vs variant
    specs = [("alexnet (fused LRN)", cfg, "auto"), ("torch-op LRN (baseline)", cfg, "torch")]
    if args.vs:
        specs = [("as given", cfg, "auto")]
        specs += [(f"+ {vs}", load_config(args.preset, None, [*args.overrides, *vs.split()]), "auto") for vs in args.vs]
    with tempfile.TemporaryDirectory(prefix="alexnet-bench-step-") as tmp:
        trainers = [Trainer(c, args.data, f"{tmp}/{i}", progress=False) for i, (_, c, _) in enumerate(specs)]
        steps = {name: (_timed_step(tr), backend) for (name, _, backend), tr in zip(specs, trainers)}
        times: dict[str, list[dict[str, float]]] = {name: [] for name in steps}
        k = 0
        for name, (step, backend) in steps.items():
            with _lrn_backend(backend):
                for _ in range(args.warmup):
                    step(k := k + 1)
        for _ in range(args.repeats):
            for name, (step, backend) in steps.items():
                with _lrn_backend(backend):
                    times[name].append(step(k := k + 1))
        first = next(iter(steps.values()))[0]
        profile = _profile(first, k) if args.profile else None
        resolved = trainers[0].cfg
        dev = trainers[0].device
    results = {}
    for (name, c, _), tr in zip(specs, trainers):
        ts = times[name]
        phases = {p: statistics.median(t[p] for t in ts) for p in PHASES}
        total = statistics.median(sum(t.values()) for t in ts)
        results[name] = {"phases_ms": {p: 1e3 * v for p, v in phases.items()}, "step_ms": 1e3 * total,
                         "batch": c.batch_size, "images_per_s": c.batch_size / total, "repeats": len(ts),
                         "precision": tr.cfg.precision}  # fmt: skip
    rates = [r["images_per_s"] for r in results.values()]
    return {"benchmark": "training step by phase", "preset": args.preset, "overrides": list(args.overrides),
            "arch": resolved.model.arch, "batch": resolved.batch_size, "precision": resolved.precision,
            "channels_last": resolved.channels_last, "results": results, "ratio": rates[0] / rates[1],
            "versus": bool(args.vs), "profile": profile, "env": environment(dev)}  # fmt: skip


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
    width = max(26, *(len(name) for name in r["results"]))
    lines[-1] = f"  {'candidate':<{width}} " + " ".join(f"{p:>9}" for p in PHASES) + "   step ms   images/s"
    for name, s in r["results"].items():
        cells = " ".join(f"{s['phases_ms'][p]:9.1f}" for p in PHASES)
        lines.append(f"  {name:<{width}} {cells} {s['step_ms']:9.1f} {s['images_per_s']:10.0f}")
    repeats = next(iter(r["results"].values()))["repeats"]
    if r.get("versus"):
        base = next(iter(r["results"].values()))["images_per_s"]
        for name, s in list(r["results"].items())[1:]:
            lines.append(f"  {name} / as given, images/s: {s['images_per_s'] / base:.2f}x (medians of {repeats} alternating steps)")
    else:
        lines.append(f"  ours / baseline: {r['ratio']:.2f}x (medians of {repeats} alternating steps)")
    if r["profile"]:
        lines.append("  top operators of ours (self time per step):")
        for row in r["profile"]:
            lines.append(f"    {row['op']:<48} {row['self_ms_per_step']:8.1f} ms  x{row['calls_per_step']:.0f}")
    return "\n".join(lines)
