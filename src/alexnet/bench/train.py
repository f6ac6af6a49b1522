"""Training step throughput: the paper model as `alexnet train` runs it, against plain-PyTorch baselines."""

from __future__ import annotations

import argparse
from typing import Any

from .harness import run_alternating
from .timing import environment

# fp32 peak of this 2-core AVX-512 machine on conv layers, measured with large GEMM-like
# convolutions (DESIGN/issue notes): ~247 GFLOP/s. A training step is ~3x the forward's
# 2 x multiply-adds.
PEAK_GFLOPS = 247.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="alexnet", help="our model to time (default alexnet)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="our model in channels_last")  # fmt: skip
    p.add_argument("--bf16", action="store_true", help="also time our model under bf16 autocast")
    p.add_argument("--compile", action="store_true", help="also time our model under torch.compile")
    p.add_argument("--no-baselines", action="store_true", help="time only our model")
    p.add_argument("--peak-gflops", type=float, default=PEAK_GFLOPS, help="fp32 peak used for the %% of limit")
    p.add_argument("--device", default="cpu")


def candidates(args: argparse.Namespace, mode: str) -> dict[str, dict[str, Any]]:
    base = {"batch": args.batch, "mode": mode, "device": args.device}
    ours = {**base, "model": "alexnet", "arch": args.arch, "options": {"num_classes": 1000} if args.arch != "alexnet-small" else {},
            "malloc_fix": True, "channels_last": args.channels_last}  # fmt: skip
    specs: dict[str, dict[str, Any]] = {"alexnet": ours}
    if not args.no_baselines:
        specs["torchvision-style (no LRN)"] = {**base, "model": "torchvision"}
        specs["naive paper (built-in LRN)"] = {**base, "model": "naive-paper"}
    if args.bf16:
        specs["alexnet bf16"] = {**ours, "bf16": True}
    if args.compile:
        specs["alexnet compiled"] = {**ours, "compile": True}
    return specs


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..models import create_model
    from ..summary import summarize

    results = run_alternating(candidates(args, "train"), warmup=args.warmup, repeats=args.repeats)
    macs = summarize(create_model(args.arch)).macs
    limit = args.peak_gflops * 1e9 / (6 * macs)
    ours = results["alexnet"]["images_per_s"]
    ratios = {f"alexnet / {name}": ours / r["images_per_s"] for name, r in results.items() if name != "alexnet"}
    return {"benchmark": "train step", "arch": args.arch, "batch": args.batch, "results": results, "ratios": ratios,
            "fp32_limit_images_per_s": limit, "fraction_of_limit": ours / limit, "env": environment(args.device)}  # fmt: skip


def format_result(r: dict[str, Any]) -> str:
    lines = [f"{r['benchmark']}: {r['arch']}, batch {r['batch']} ({r['env']['device']}, {r['env']['torch_threads']} threads)"]
    for name, s in r["results"].items():
        lines.append(f"  {name:<30} {s['images_per_s']:8.1f} images/s  (median {s['median_s']:.3f} s, "
                     f"min {s['min_s']:.3f}, max {s['max_s']:.3f}, n={s['repeats']})")  # fmt: skip
    for name, v in r["ratios"].items():
        lines.append(f"  {name:<44} {v:.2f}x")
    if "fp32_limit_images_per_s" in r:
        lines.append(f"  fp32 limit {r['fp32_limit_images_per_s']:.1f} images/s -> alexnet at {100 * r['fraction_of_limit']:.0f}%")
    return "\n".join(lines)
