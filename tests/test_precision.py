"""precision: auto picks bf16 only where the device computes it natively, decided from the CPU's own
feature flags (and a oneDNN ISA cap), and every run records what it resolved to."""

import json

import pytest
import torch
import yaml

from alexnet import runtime
from alexnet.config import PRESETS, TrainConfig, load_config
from alexnet.runtime import cpu_info, emulated_bf16_note, resolve_precision
from alexnet.train import train

# The first lines of /proc/cpuinfo of each kind of machine (flags abridged to the relevant ones).
CPUS = {
    "genoa": ("AMD EPYC 9354P", "fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_vnni", True),
    "sapphire-rapids": ("Intel(R) Xeon(R) Platinum 8488C", "avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", True),
    "zen3": ("AMD EPYC 7B13", "fpu sse4_2 avx avx2 fma bmi2", False),
    # AVX-512 without bf16: torch.ops.mkldnn._is_mkldnn_bf16_supported() says True, oneDNN only emulates it
    "skylake-x": ("Intel(R) Xeon(R) Gold 6148", "avx2 fma avx512f avx512bw avx512vl avx512dq avx512cd", False),
    "laptop": ("11th Gen Intel(R) Core(TM) i7-1165G7", "avx2 fma avx512f avx512vl avx512_vnni", False),
}


@pytest.fixture
def cpu(tmp_path, monkeypatch):
    """cpu(kind) makes the runtime read that machine's /proc/cpuinfo."""

    def use(kind: str, key: str = "flags") -> None:
        model, flags, _ = CPUS.get(kind, ("Neoverse-V1", "fp asimd bf16 sve", True))
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nvendor_id\t: x\nmodel name\t: {model}\n{key}\t\t: {flags}\n\n"
                                          "processor\t: 1\nflags\t\t: nothing\n")  # fmt: skip
        monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "cpuinfo")

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    return use


@pytest.mark.parametrize("kind", sorted(CPUS))
def test_auto_is_bf16_exactly_where_the_cpu_has_bf16_arithmetic(cpu, kind):
    cpu(kind)
    native = CPUS[kind][2]
    assert cpu_info().native_bf16 is native
    assert cpu_info().model == CPUS[kind][0]
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    for explicit in ("fp32", "bf16"):
        assert resolve_precision(explicit, "cpu") == explicit


def test_arm_bf16_feature_counts_and_unknown_cpus_get_fp32(cpu, monkeypatch, tmp_path):
    cpu("graviton3", key="Features")
    assert cpu_info().native_bf16 and resolve_precision("auto") == "bf16"
    monkeypatch.setattr(runtime, "CPUINFO", tmp_path / "absent")
    assert not cpu_info().native_bf16 and resolve_precision("auto") == "fp32"


@pytest.mark.parametrize("cap, native", [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                                         ("AVX10_1_512_AMX", True), ("ALL", True)])  # fmt: skip
def test_a_onednn_isa_cap_below_bf16_means_emulated(cpu, monkeypatch, cap, native):
    """ONEDNN_MAX_CPU_ISA=AVX2 is how an AVX-512 machine takes AVX2's code paths: bf16 is then emulated."""
    cpu("genoa")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert cpu_info().native_bf16 is native
    assert resolve_precision("auto") == ("bf16" if native else "fp32")
    assert cap.upper() in cpu_info().describe()


def test_cuda_follows_the_gpus_own_bf16_support(monkeypatch):
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, s=supported: s)
        assert resolve_precision("auto", "cuda") == ("bf16" if supported else "fp32")


def test_a_bf16_request_on_a_cpu_without_it_gets_one_line(cpu):
    cpu("zen3")
    note = emulated_bf16_note("bf16", "cpu")
    assert note and "\n" not in note and "emulated" in note and "slower than fp32" in note and "AMD EPYC 7B13" in note
    assert emulated_bf16_note("fp32", "cpu") is None
    cpu("genoa")
    assert emulated_bf16_note("bf16", "cpu") is None


def test_every_preset_and_the_default_config_are_auto():
    assert TrainConfig().precision == "auto"
    for preset in PRESETS:
        assert load_config(preset).precision == "auto", preset


TINY = ["model.arch=alexnet-small", "model.options.widths=[8,16,16,16,8]", "model.options.fc=[16,16]", "batch_size=32",
        "data.workers=1", "max_steps=2", "log_every=1", "checkpoint_every=2"]  # fmt: skip


@pytest.mark.parametrize("kind, requested, resolved", [("zen3", "auto", "fp32"), ("genoa", "auto", "bf16"),
                                                       ("zen3", "bf16", "bf16")])  # fmt: skip
def test_a_run_records_and_announces_its_resolved_precision(cpu, fashion_small, tmp_path, capfd, kind, requested, resolved):
    cpu(kind)
    cfg = load_config("demo", overrides=TINY + [f"precision={requested}"])
    train(cfg, fashion_small, tmp_path / "run", progress=False)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["precision"] == resolved
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["precision"] == {"requested": requested, "resolved": resolved}
    assert env["cpu"]["model"] == CPUS[kind][0]
    lines = capfd.readouterr().err.splitlines()
    assert f"precision {resolved}" in lines[0] and CPUS[kind][0] in lines[0]
    notes = [line for line in lines if "emulated" in line]
    assert len(notes) == (1 if kind == "zen3" and requested == "bf16" else 0)
