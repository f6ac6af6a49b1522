"""`alexnet bench train` and `bench infer` run end to end at a tiny size and report figures that
agree with each other (ratios and limits computed from the timings they print)."""

import json

import pytest

from alexnet.bench.train import step_flops
from alexnet.bench.worker import peak_flops_per_image
from alexnet.cli import main
from alexnet.models import create_model
from alexnet.summary import summarize


@pytest.mark.parametrize("command, passes", [("train", 3), ("infer", 1)])
def test_bench_reports_the_limit_from_a_peak_measured_in_the_same_run(command, passes, capsys):
    args = ["bench", command, "--arch", "alexnet-small", "--batch", "2", "--repeats", "1", "--warmup", "0",
            "--no-baselines", "--bf16", "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["results"]) == {"alexnet", "alexnet bf16"}  # the probe is reported apart, not as a candidate
    ours = r["results"]["alexnet"]["images_per_s"]
    assert r["ratios"]["alexnet bf16 / alexnet"] == pytest.approx(r["results"]["alexnet bf16"]["images_per_s"] / ours)
    s = summarize(create_model("alexnet-small"))
    first = s.rows[0]
    assert first.name == "features.conv1" and first.macs > 0
    # a training step: forward, weight gradients, input gradients, except the image's (never computed)
    flops = 2 * s.macs if passes == 1 else 2 * 3 * s.macs - 2 * first.macs
    assert r["flops_per_image"] == pytest.approx(flops)
    probe = r["peak_probe"]
    assert probe["spec"]["model"] == "peak" and probe["repeats"] == 1
    gflops = probe["images_per_s"] * peak_flops_per_image() / 1e9
    assert r["measured_peak_gflops"] == pytest.approx(gflops) and gflops > 0
    assert r["fraction_of_measured_limit"] == pytest.approx(ours * flops / (gflops * 1e9))
    assert "fraction_of_limit" not in r  # no peak is assumed: the machine's own is measured
    if command == "infer":
        assert r["single_image_latency_ms"] > 0


def test_the_paper_model_training_step_is_4_14_gflop_per_image():
    # the figure behind the issue's ~60 images/s fp32 limit at 247 GFLOP/s
    assert step_flops("alexnet", 3) / 1e9 == pytest.approx(4.1356, abs=1e-4)
    assert step_flops("alexnet", 1) / 1e9 == pytest.approx(2 * 0.7244068, abs=1e-6)


def test_bench_without_the_probe_omits_its_fields_and_a_given_peak_is_reported_as_given(capsys):
    args = ["bench", "train", "--arch", "alexnet-small", "--batch", "2", "--repeats", "1", "--warmup", "0",
            "--no-baselines", "--no-peak"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "limit" not in text and "peak measured" not in text
    assert main([*args, "--peak-gflops", "100", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["fraction_of_limit"] == pytest.approx(r["results"]["alexnet"]["images_per_s"] * r["flops_per_image"] / 100e9)
    assert main([*args, "--peak-gflops", "0"]) == 2


def test_bench_times_each_fast_path_switched_off_alone(capsys):
    from alexnet.models.layers import FAST_PATHS

    args = ["bench", "train", "--arch", "alexnet-small", "--batch", "2", "--repeats", "1", "--warmup", "0", "--no-baselines",
            "--no-peak", "--without", "onednn-linear", "--without", "fused-lrn", "--json"]  # fmt: skip
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    for name in ("onednn-linear", "fused-lrn"):
        spec = r["results"][f"alexnet without {name}"]["spec"]
        assert set(spec["fast_paths"]) == set(FAST_PATHS) - {name}
        assert f"alexnet / alexnet without {name}" in r["ratios"]
    assert main([*args[:-1], "--without", "no-such-path"]) == 2  # argparse names the valid ones, in one line
    err = capsys.readouterr().err.strip()
    assert "invalid choice: 'no-such-path'" in err and len(err.splitlines()) == 1


def test_every_bench_names_its_cpu_in_its_first_line(capsys):
    from alexnet.runtime import cpu_info

    args = ["bench", "train", "--arch", "alexnet-small", "--batch", "2", "--repeats", "1", "--warmup", "0",
            "--no-baselines", "--no-peak"]
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    info = cpu_info()
    assert first == f"bench train on {info.describe()}"
    assert info.model in first and info.isa in first and "bf16" in first and f"{info.threads} threads" in first
    assert main([*args, "--json"]) == 0  # the JSON stays parseable: the line goes to stderr
    out = capsys.readouterr()
    assert json.loads(out.out)["env"]["cpu"]["model"] == info.model and out.err.startswith("bench train on ")


def test_bench_steps_per_turn_is_reported(capsys):
    args = ["bench", "train", "--arch", "alexnet-small", "--batch", "2", "--repeats", "1", "--warmup", "0",
            "--no-baselines", "--no-peak", "--steps", "2"]
    assert main(args) == 0
    assert "batch 2, 2 steps per turn" in capsys.readouterr().out.splitlines()[1]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps_per_turn"] == 2


@pytest.mark.parametrize("args, message", [
    (["train", "--batch", "0"], "--batch must be >= 1, got 0"),
    (["infer", "--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["train", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["lrn", "--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["loader", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["layers", "--batch", "0"], "--batch must be >= 1, got 0"),
])  # fmt: skip
def test_bench_refuses_counts_below_one_in_one_line(args, message, capsys):
    assert main(["bench", *args]) == 2  # before any worker starts: no traceback from a division by zero
    err = capsys.readouterr().err.strip()
    assert err.endswith(message) and len(err.splitlines()) == 1


def test_baseline_rows_say_which_settings_they_share_with_ours():
    """Like for like: a torchvision-style row with our settings (channels_last, tune_allocator) beside
    the plain-defaults one, and our model without tune_allocator alone, so each ratio isolates one thing."""
    import argparse

    from alexnet.bench.train import add_arguments, candidates

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    specs = candidates(parser.parse_args(["--no-peak"]), "train")
    ours = specs["alexnet"]
    assert (ours["malloc_fix"], ours["channels_last"]) == (True, True)
    same = specs["torchvision-style, channels_last + tune_allocator"]
    assert (same["model"], same["malloc_fix"], same["channels_last"]) == ("torchvision", True, True)
    plain = specs["torchvision-style, PyTorch defaults"]
    assert not plain.get("malloc_fix") and not plain.get("channels_last")
    alone = specs["alexnet, no tune_allocator"]
    assert {k for k in ours.keys() | alone.keys() if ours.get(k) != alone.get(k)} == {"malloc_fix", "role"}
    assert {s["role"] for name, s in specs.items() if name != "alexnet"} == {"baseline"}


def test_the_fast_paths_row_switches_them_off_in_its_worker(capsys):
    args = ["bench", "train", "--arch", "alexnet-small", "--batch", "2", "--repeats", "1", "--warmup", "0",
            "--no-baselines", "--no-peak", "--fast-paths-off", "--json"]
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["results"]["alexnet, ALEXNET_FAST_PATHS=0"]["spec"]["fast_paths"] is False
    assert "alexnet / alexnet, ALEXNET_FAST_PATHS=0" in r["ratios"]


def test_bench_layers_times_every_weight_layer_with_its_summary_mult_adds(capsys):
    # alexnet-small has LRN and max-pools; conv-local (the baseline here) has locally connected layers
    assert main(["bench", "layers", "--arch", "alexnet-small", "--baseline", "conv-local", "--batch", "4",
                 "--repeats", "2", "--warmup", "0", "--json"]) == 0  # fmt: skip
    r = json.loads(capsys.readouterr().out)
    assert [m["arch"] for m in r["models"]] == ["alexnet-small", "conv-local"]
    for m in r["models"]:
        summary = summarize(create_model(m["arch"]))
        weighted = [row for row in summary.rows if row.kind in ("Conv2d", "Linear", "LocallyConnected2d")]
        timed = {row["layer"]: row for row in m["rows"]}
        assert all(w.name in timed and timed[w.name]["macs_per_image"] == w.macs for w in weighted)
        assert {"Conv2d", "Linear", "MaxPool2d"} <= {row["kind"] for row in m["rows"]}
        assert all(row["forward_ms"] > 0 and row["train_ms"] > 0 for row in m["rows"])
        assert m["layers_ms"] == pytest.approx(sum(row["train_ms"] for row in m["rows"])) and m["whole_ms"] > 0
        first, second = m["rows"][0], next(row for row in m["rows"][1:] if row["gmacs_per_s"])
        # the first layer's input gradient is never computed: forward + weight gradient, 2x its mult-adds
        assert first["gmacs_per_s"] == pytest.approx(2 * first["macs_per_image"] * 4 / (first["train_ms"] / 1e3) / 1e9)
        assert second["gmacs_per_s"] == pytest.approx(3 * second["macs_per_image"] * 4 / (second["train_ms"] / 1e3) / 1e9)
    assert "LocallyConnected2d" in {row["kind"] for row in r["models"][1]["rows"]}
    assert "LocalResponseNorm" in {row["kind"] for row in r["models"][0]["rows"]}
    assert main(["bench", "layers", "--arch", "alexnet-small", "--baseline", "none", "--batch", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "features.conv2" in out and "the listed layers" in out and "forward + backward time" not in out
    # a misspelt baseline: one line, before the first model is timed
    assert main(["bench", "layers", "--arch", "alexnet-small", "--baseline", "vgg16", "--batch", "2", "--repeats", "1"]) == 2
    captured = capsys.readouterr()
    assert "unknown model 'vgg16'" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""
