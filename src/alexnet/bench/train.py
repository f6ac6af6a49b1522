"""Training step throughput: the paper model as `alexnet train` runs it, against plain-PyTorch baselines."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from ..models import create_model
from ..models.layers import FAST_PATHS
from ..runtime import environment
from ..summary import summarize
from .harness import run_alternating
from .worker import peak_flops_per_image

# The fp32 limit is the machine's own: the worker "peak" (PEAK_PROBE) times the paper's conv3
# forward, a large GEMM-like convolution, in the same run, alternating with the candidates, so a
# busy moment lowers both alike. A training step is ~3x the forward's 2 x multiply-adds, less the
# first layer's input gradient, which is never computed (`step_flops`: 4.14 GFLOP per image for the
# paper model). Measured probes (docs/benchmarks.md): 247 GFLOP/s on the 2-core AMD EPYC (AVX-512),
# 120 on the AVX2-only Zen 3: no one figure fits every CPU. --peak-gflops compares against a
# figure of the user's instead (a datasheet's, say) as well.
PEAK_PROBE = "peak probe (conv3 fwd, fp32)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="alexnet", help="our model to time (default alexnet)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=1,
                   help="consecutive steps each candidate times per turn (default 1; more is closer to a training "
                        "run's back-to-back steps, which do not start on caches another worker left cold)")  # fmt: skip
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="our model in channels_last")  # fmt: skip
    p.add_argument("--bf16", action="store_true", help="also time our model under bf16 autocast")
    p.add_argument("--compile", action="store_true", help="also time our model under torch.compile")
    p.add_argument("--no-baselines", action="store_true", help="time only our model (and the peak probe)")
    p.add_argument("--fast-paths-off", action="store_true",
                   help="also time our model with its CPU fast paths off (ALEXNET_FAST_PATHS=0): do they pay here?")
    p.add_argument("--without", action="append", default=[], choices=sorted(FAST_PATHS), metavar="FAST_PATH",
                   help="also time our model with this one CPU fast path off (repeatable; models/layers.FAST_PATHS: "
                        f"{', '.join(FAST_PATHS)}): does it pay on this CPU?")  # fmt: skip
    p.add_argument("--no-peak", action="store_true", help="skip the in-run fp32 peak probe (then no %% of a limit)")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="also report the %% of the limit at this fp32 peak (GFLOP/s), beside the measured one's")
    p.add_argument("--device", default="cpu")


# The rows, named by what differs. "alexnet" is the package's model as `alexnet train` runs it:
# channels_last, the CLI's allocator setting (alexnet.runtime.tune_allocator) and PaperSGD. The
# torchvision-style layout runs twice: with the same two settings (like for like: the model alone
# differs) and with PyTorch's defaults (NCHW, glibc's default allocator), as a user's first try
# would. "alexnet, no tune_allocator" is the package's model built and stepped the same way in a
# plain loop that never calls tune_allocator: the benefit of that one call.
OURS = "alexnet"
SAME_SETTINGS = "channels_last + tune_allocator"
PLAIN = "PyTorch defaults"


def candidates(args: argparse.Namespace, mode: str) -> dict[str, dict[str, Any]]:
    base = {"batch": args.batch, "mode": mode, "device": args.device}
    options = {"num_classes": 1000} if args.arch != "alexnet-small" else {}
    ours = {**base, "model": "alexnet", "arch": args.arch, "options": options, "malloc_fix": True,
            "channels_last": args.channels_last, "role": "ours"}  # fmt: skip
    specs: dict[str, dict[str, Any]] = {OURS: ours}
    if not args.no_baselines:
        specs[f"{OURS}, no tune_allocator"] = {**ours, "malloc_fix": False, "role": "baseline"}
        specs[f"torchvision-style, {SAME_SETTINGS}"] = {**base, "model": "torchvision", "malloc_fix": True,
                                                        "channels_last": True, "role": "baseline"}  # fmt: skip
        specs[f"torchvision-style, {PLAIN}"] = {**base, "model": "torchvision", "role": "baseline"}
        specs[f"naive paper (built-in LRN), {PLAIN}"] = {**base, "model": "naive-paper", "role": "baseline"}
    if not args.no_peak:
        specs[PEAK_PROBE] = {"batch": 128, "mode": "infer", "device": args.device, "model": "peak",
                             "malloc_fix": True, "channels_last": True}  # fmt: skip
    if args.fast_paths_off:
        specs[f"{OURS}, ALEXNET_FAST_PATHS=0"] = {**ours, "fast_paths": False, "role": "baseline"}
    for name in args.without:
        specs[f"{OURS} without {name}"] = {**ours, "fast_paths": sorted(set(FAST_PATHS) - {name}), "role": "baseline"}
    if args.bf16:
        specs[f"{OURS} bf16"] = {**ours, "bf16": True, "role": "variant"}
    if args.compile:
        specs[f"{OURS} compiled"] = {**ours, "compile": True, "role": "variant"}
    return specs


def check_peak(args: argparse.Namespace) -> None:
    if args.peak_gflops is not None and not args.peak_gflops > 0:
        raise ConfigError(f"--peak-gflops must be > 0, got {args.peak_gflops}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_peak(args)
    results = run_alternating(candidates(args, "train"), warmup=args.warmup, repeats=args.repeats, steps=args.steps)
    out = {"benchmark": "train step", "arch": args.arch, "batch": args.batch, "steps_per_turn": args.steps}
    return {**out, **limits(args, results, passes=3)}


def step_flops(arch: str, passes: int) -> float:
    """FLOPs per image of a forward (`passes` 1) or a training step (`passes` 3): 2 per multiply-add,
    for the forward, the weight gradients and the input gradients; the first learned layer's input
    is the image, which needs no gradient, so its input-gradient pass is not counted."""
    s = summarize(create_model(arch))
    flops = 2 * passes * s.macs
    if passes == 3:
        flops -= 2 * next(r.macs for r in s.rows if r.macs > 0)
    return float(flops)


def limits(args: argparse.Namespace, results: dict[str, Any], passes: int) -> dict[str, Any]:
    """Ratios to the baselines and the fraction of the fp32 limit set by the peak probe of this run
    (and by --peak-gflops when given). `passes`: the step's cost in forwards (3 for training, 1 for inference)."""
    probe = results.pop(PEAK_PROBE, None)
    flops = step_flops(args.arch, passes)
    ours = results[OURS]["images_per_s"]
    ratios = {}
    for name, r in results.items():  # baselines: ours / theirs; our variants (bf16, compiled): variant / ours
        role = r["spec"].get("role")
        if role == "variant":
            ratios[f"{name} / {OURS}"] = r["images_per_s"] / ours
        elif role == "baseline":
            ratios[f"{OURS} / {name}"] = ours / r["images_per_s"]
    out: dict[str, Any] = {"results": results, "ratios": ratios, "flops_per_image": flops, "env": environment(args.device)}
    if args.peak_gflops is not None:
        limit = args.peak_gflops * 1e9 / flops
        out.update(fp32_limit_images_per_s=limit, fraction_of_limit=ours / limit)
    if probe is not None:
        gflops = probe["images_per_s"] * peak_flops_per_image() / 1e9
        out.update(peak_probe=probe, measured_peak_gflops=gflops, measured_limit_images_per_s=gflops * 1e9 / flops,
                   fraction_of_measured_limit=ours * flops / (gflops * 1e9))  # fmt: skip
    return out


def format_result(r: dict[str, Any]) -> str:
    turn = f", {r['steps_per_turn']} steps per turn" if r.get("steps_per_turn", 1) > 1 else ""
    lines = [f"{r['benchmark']}: {r['arch']}, batch {r['batch']}{turn} ({r['env']['device']}, {r['env']['torch_threads']} threads)"]
    for name, s in r["results"].items():
        lines.append(f"  {name:<50} {s['images_per_s']:8.1f} images/s  (median {s['median_s']:.3f} s, "
                     f"min {s['min_s']:.3f}, max {s['max_s']:.3f}, n={s['repeats']})")  # fmt: skip
    for name, v in r["ratios"].items():
        lines.append(f"  {name:<60} {v:.2f}x")
    if "measured_peak_gflops" in r:
        lines.append(f"  fp32 peak measured in this run {r['measured_peak_gflops']:.0f} GFLOP/s (conv3 forward): limit "
                     f"{r['measured_limit_images_per_s']:.1f} images/s at {r['flops_per_image'] / 1e9:.2f} GFLOP per image "
                     f"-> alexnet at {100 * r['fraction_of_measured_limit']:.0f}%")  # fmt: skip
    if "fp32_limit_images_per_s" in r:
        lines.append(f"  at the given peak of {r['fp32_limit_images_per_s'] * r['flops_per_image'] / 1e9:.0f} GFLOP/s: limit "
                     f"{r['fp32_limit_images_per_s']:.1f} images/s -> alexnet at {100 * r['fraction_of_limit']:.0f}%")  # fmt: skip
    return "\n".join(lines)
