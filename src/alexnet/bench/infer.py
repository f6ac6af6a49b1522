"""Inference: batch forward throughput against plain-PyTorch baselines, and single-image latency."""

from __future__ import annotations

import argparse
from typing import Any

from . import train as _train
from .harness import run_alternating


def add_arguments(p: argparse.ArgumentParser) -> None:
    _train.add_arguments(p)


def run(args: argparse.Namespace) -> dict[str, Any]:
    _train.check_peak(args)
    results = run_alternating(_train.candidates(args, "infer"), warmup=args.warmup, repeats=args.repeats, steps=args.steps)
    single = argparse.Namespace(**{**vars(args), "batch": 1, "no_baselines": True, "no_peak": True, "bf16": False,
                                   "compile": False, "fast_paths_off": False, "without": []})  # fmt: skip
    latency = run_alternating(_train.candidates(single, "infer"), warmup=3, repeats=15)[_train.OURS]
    return {"benchmark": "inference", "arch": args.arch, "batch": args.batch, "steps_per_turn": args.steps,
            **_train.limits(args, results, passes=1),
            "single_image_latency_ms": 1e3 * latency["median_s"]}  # fmt: skip


def format_result(r: dict[str, Any]) -> str:
    return _train.format_result(r) + f"\n  single-image latency (batch 1): {r['single_image_latency_ms']:.1f} ms"
