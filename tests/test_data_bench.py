"""`alexnet bench loader` runs end to end on a tiny setting and reports consistent figures."""

import json

import torch

from alexnet.cli import main


def test_bench_loader_tiny(capsys):
    args = ["bench", "loader", "--images", "16", "--classes", "2", "--jpeg-size", "64x48", "--decode-size", "96x64",
            "--decode-images", "2", "--size", "32", "--crop", "28", "--batch-size", "8", "--store-batches", "2",
            "--repeats", "1", "--warmup", "0", "--json"]
    threads = torch.get_num_threads()
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)  # the benchmark pins one thread for per-core figures
    r = json.loads(capsys.readouterr().out)
    lo = r["loader"]
    assert r["prepare"]["images"] == 16 and r["decode"]["speedup"] > 0
    assert abs(lo["ratio"] - lo["store_images_per_s"] / lo["conventional_images_per_s"]) < 1e-9
    assert r["env"]["torch"] and r["settings"]["crop"] == 28
