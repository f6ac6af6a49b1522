"""Weights out: ONNX (dynamic batch, onnxruntime), TorchScript, safetensors, torch.hub; round trips."""

import json
from pathlib import Path

import pytest
import torch

from alexnet.checkpoint import load_checkpoint, save_checkpoint
from alexnet.cli import main
from alexnet.errors import CheckpointError, ConfigError
from alexnet.interop.export import (
    export_checkpoint,
    load_safetensors,
    read_safetensors_metadata,
)
from alexnet.models import LocalResponseNorm, create_model
from alexnet.preprocess import Preprocess

REPO = Path(__file__).resolve().parents[1]
NAMES = [f"class {i}" for i in range(10)]


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """alexnet-small (paper LRN convention) with class names and a non-default preprocessing."""
    torch.manual_seed(0)
    model = create_model("alexnet-small", num_classes=10).eval()
    pp = Preprocess(resize=32, crop=28, in_chans=1, scale=1 / 255, mean=(0.286,), std=(0.353,))
    path = tmp_path_factory.mktemp("export") / "small.pt"
    save_checkpoint(path, model, class_names=NAMES, preprocess=pp)
    return model, path


def _batch(n, seed=5):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace: deprecated in torch 2.13, still works
@pytest.mark.parametrize("convention", ["paper", "per-term"])
def test_traced_lrn_is_torch_ops_equal_to_ours(convention):
    """torch.jit.trace records torch's own LRN (alpha * n for the paper convention), so a
    TorchScript file needs no alexnet ops to load."""
    ours = LocalResponseNorm(5, 1e-4, 0.75, 2.0, convention=convention)
    x = torch.randn(2, 16, 5, 5) * 30
    traced = torch.jit.trace(ours, x)
    assert "alexnet::" not in str(traced.graph)
    torch.testing.assert_close(traced(x), ours(x), rtol=1e-6, atol=1e-6)


def test_onnx_dynamic_batch_matches_pytorch_in_onnxruntime(small_ckpt, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    model, path = small_ckpt
    out = tmp_path / "small.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["check"]["max_abs_diff"] <= 1e-4 and report["check"]["batch"] == 3
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and not isinstance(inp.shape[0], int) and inp.shape[1:] == [1, 28, 28]
    for n in (1, 5):  # batch sizes the export never saw
        x = _batch(n)
        (got,) = session.run(["logits"], {"images": x.numpy()})
        with torch.no_grad():
            want = model(x)
        assert got.shape == (n, 10)
        assert float((torch.from_numpy(got) - want).abs().max()) <= 1e-4


def test_onnx_export_prints_its_own_line_and_not_the_exporters_chatter(small_ckpt, tmp_path):
    """In a fresh process (the exporter says its lines once per process): one line, ours."""
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    _, path = small_ckpt
    out = tmp_path / "quiet.onnx"
    done = subprocess.run([sys.executable, "-m", "alexnet", "export", "--checkpoint", str(path), "--format", "onnx",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}") and len(done.stdout.splitlines()) == 1
    assert "torchvision" not in done.stderr and "LeafSpec" not in done.stderr, done.stderr


def test_torchscript_round_trip(small_ckpt, tmp_path):
    model, path = small_ckpt
    result = export_checkpoint(path, "torchscript", tmp_path / "small.ts")
    assert result.check["max_abs_diff"] <= 1e-4
    loaded = torch.jit.load(str(tmp_path / "small.ts"))
    x = _batch(4)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


def test_safetensors_round_trip_with_metadata_and_create_model(small_ckpt, tmp_path):
    from safetensors.torch import load_file

    model, path = small_ckpt
    out = tmp_path / "small.safetensors"
    assert main(["export", str(path), "--format", "safetensors", "--out", str(out)]) == 0
    meta = read_safetensors_metadata(out)
    assert meta["arch"] == "alexnet-small" and meta["class_names"] == NAMES
    assert meta["model_config"]["widths"] == [64, 128, 192, 192, 128]
    assert Preprocess.from_dict(meta["preprocess"]) == Preprocess.from_dict(load_checkpoint(path)["preprocess"])
    # reloadable by create_model from the metadata alone
    rebuilt = create_model(meta["arch"], **meta["model_config"])
    rebuilt.load_state_dict(load_file(str(out)), strict=True)
    reloaded, _ = load_safetensors(out)
    x = _batch(3)
    with torch.no_grad():
        want = model(x)
        assert torch.equal(rebuilt.eval()(x), want) and torch.equal(reloaded.eval()(x), want)


def test_hubconf_loads_checkpoints_and_safetensors(small_ckpt, tmp_path):
    model, path = small_ckpt
    export_checkpoint(path, "safetensors", tmp_path / "s.safetensors")
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)  # torch.hub.list reads GitHub repos only
    assert hubconf.dependencies == ["torch"]
    assert {"alexnet", "alexnet_1gpu", "caffenet", "alexnet_owt", "alexnet_small"} <= set(dir(hubconf))
    x = _batch(2)
    with torch.no_grad():
        want = model(x)
        for weights in (path, tmp_path / "s.safetensors"):
            hub = torch.hub.load(str(REPO), "alexnet_small", source="local", weights=str(weights))
            assert hub.class_names == NAMES and hub.preprocess["crop"] == 28
            assert torch.equal(hub(x), want)
    fresh = torch.hub.load(str(REPO), "alexnet_small", source="local", num_classes=3, in_chans=3)
    assert fresh.num_classes == 3
    with pytest.raises(ConfigError, match="alexnet-small"):
        torch.hub.load(str(REPO), "caffenet", source="local", weights=str(path))


def test_bad_inputs_are_user_errors(small_ckpt, tmp_path):
    _, path = small_ckpt
    with pytest.raises(ConfigError, match="unknown export format"):
        export_checkpoint(path, "tflite", tmp_path / "x")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not an alexnet export"):
        load_safetensors(tmp_path / "foreign.safetensors")
    assert main(["export", str(tmp_path / "missing.pt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
