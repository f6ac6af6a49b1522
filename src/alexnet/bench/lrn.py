"""LRN forward+backward: our kernel against torch.nn.LocalResponseNorm on the same tensor."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..models.lrn import LocalResponseNorm, backend_for
from ..runtime import environment
from .timing import alternate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shape", default="64,96,55,55", help="N,C,H,W of the input (default: conv1's output at batch 64)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--channels-last", action="store_true", help="time channels_last tensors")
    p.add_argument("--bf16", action="store_true", help="bfloat16 tensors (as under bf16 autocast) for both")


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = tuple(int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    x = torch.randn(*shape).relu_()
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    x = x.to(dtype)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    grad = torch.randn_like(x)
    ours = LocalResponseNorm(5, 1e-4, 0.75, 2.0, convention="per-term")  # the built-in's convention
    ref: torch.nn.Module = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)
    if args.bf16:  # the built-in has no bf16 CPU kernel (avg_pool3d), so a user upcasts around it
        ref = _Upcast(ref)

    def step(module: torch.nn.Module) -> None:
        xi = x.detach().requires_grad_()
        module(xi).backward(grad)

    # correctness on the benchmark tensor itself
    xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ya, yb = ref(xa), ours(xb)
    ya.backward(grad)
    yb.backward(grad)
    stats = alternate({"torch.nn.LocalResponseNorm": lambda: step(ref), "alexnet": lambda: step(ours)},
                      warmup=args.warmup, repeats=args.repeats)  # fmt: skip
    speedup = stats["torch.nn.LocalResponseNorm"]["median_s"] / stats["alexnet"]["median_s"]
    return {
        "benchmark": "lrn forward+backward",
        "shape": list(shape),
        "channels_last": args.channels_last,
        "dtype": str(dtype).replace("torch.", ""),
        "backend": backend_for(x),
        "max_abs_diff_forward": (ya.float() - yb.float()).abs().max().item(),
        "max_abs_diff_grad": (xa.grad.float() - xb.grad.float()).abs().max().item(),  # type: ignore[union-attr]
        "results": stats,
        "speedup": speedup,
        "env": environment(),
    }


class _Upcast(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.float()).to(x.dtype)


def format_result(r: dict[str, Any]) -> str:
    lines = [f"LRN forward+backward on {tuple(r['shape'])} {r.get('dtype', 'float32')} (channels_last={r['channels_last']}), "
             f"backend {r['backend']}"]  # fmt: skip
    for name, s in r["results"].items():
        lines.append(f"  {name:<28} median {s['median_s'] * 1e3:8.1f} ms  (min {s['min_s'] * 1e3:.1f}, max {s['max_s'] * 1e3:.1f}, n={s['repeats']})")
    lines.append(f"  speed-up {r['speedup']:.2f}x; max |diff| forward {r['max_abs_diff_forward']:.2e}, grad {r['max_abs_diff_grad']:.2e}")
    lines.append(f"  torch {r['env']['torch']}, {r['env']['cpu_count']} cpus, {r['env']['torch_threads']} threads, commit {r['env']['git_commit']}")
    return "\n".join(lines)
