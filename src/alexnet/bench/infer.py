"""Inference: batch forward throughput against plain-PyTorch baselines, and single-image latency."""

from __future__ import annotations

import argparse
from typing import Any

from . import train as _train
from .harness import run_alternating
from .timing import environment


def add_arguments(p: argparse.ArgumentParser) -> None:
    _train.add_arguments(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results = run_alternating(_train.candidates(args, "infer"), warmup=args.warmup, repeats=args.repeats)
    single = argparse.Namespace(**{**vars(args), "batch": 1, "no_baselines": True, "bf16": False, "compile": False})
    latency = run_alternating(_train.candidates(single, "infer"), warmup=3, repeats=15)["alexnet"]
    ours = results["alexnet"]["images_per_s"]
    ratios = {f"alexnet / {name}": ours / r["images_per_s"] for name, r in results.items() if name != "alexnet"}
    return {"benchmark": "inference", "arch": args.arch, "batch": args.batch, "results": results, "ratios": ratios,
            "single_image_latency_ms": 1e3 * latency["median_s"], "env": environment(args.device)}  # fmt: skip


def format_result(r: dict[str, Any]) -> str:
    return _train.format_result(r) + f"\n  single-image latency (batch 1): {r['single_image_latency_ms']:.1f} ms"
