"""Weights out: ONNX, safetensors, TorchScript and Caffe's .npy layout, each checked after writing.

- onnx: torch.onnx's exporter (torch.export based) with a dynamic batch dimension; the file
  is run in onnxruntime on a batch of a different size than the one exported and the max
  abs difference to PyTorch is reported (and must be <= 1e-4).
- safetensors: the state_dict plus, in the header metadata, the arch, the create_model
  options, the class names and the preprocessing as JSON; `load_safetensors` rebuilds it
  with create_model.
- torchscript: torch.jit.trace of the eval-mode model, reloaded and compared like ONNX.
- caffe-npy: the grouped paper nets in bvlc_alexnet.npy's layout (interop/caffe.py).

The models go to the exporters as they are: the LRN is a registered op (models/lrn.py) that
torch.onnx.export writes as ONNX's own `LRN` and torch.jit traces as torch's local_response_norm,
and the CPU fast paths step aside while a graph is captured (models/layers.py, `fast_path`).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, model_from_checkpoint, preprocess_of
from ..errors import AlexNetError, CheckpointError, ConfigError, DiskFullError
from ..files import atomic_path, write_bytes_atomic
from ..models import create_model
from ..preprocess import Preprocess
from .caffe import BVLC_MODEL_OPTIONS, save_npy_object, state_dict_to_bvlc

FORMATS = ("onnx", "safetensors", "torchscript", "caffe-npy")
SAFETENSORS_FORMAT = "alexnet-safetensors"
MAX_ABS_DIFF = 1e-4  # the bar for an exported model against PyTorch


@dataclass
class ExportResult:
    format: str
    out: str
    bytes: int
    check: dict[str, Any] = field(default_factory=dict)  # runtime, batch, max_abs_diff

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _eval_on_cpu(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode on the CPU for the length of an export (a copy if it lives elsewhere)."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


def _example(batch: int, in_chans: int, size: int, seed: int, pp: Preprocess | None = None) -> Tensor:
    """Random images; with a Preprocess, random 0-255 pixels normalized by it (realistic input scale)."""
    gen = torch.Generator().manual_seed(seed)
    if pp is None:
        return torch.randn(batch, in_chans, size, size, generator=gen)
    x = torch.randint(0, 256, (batch, in_chans, size, size), generator=gen).float() * pp.scale
    x = x - torch.tensor(pp.mean).view(1, -1, 1, 1)
    return x if pp.std is None else x / torch.tensor(pp.std).view(1, -1, 1, 1)


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _reference(model: nn.Module, x: Tensor) -> Tensor:
    """The original model's eval-mode output (our own LRN), the yardstick for an exported file."""
    was_training = model.training
    try:
        with torch.no_grad():
            return model.eval()(x.to(next(model.parameters()).device)).cpu()
    finally:
        model.train(was_training)


def _checked(result: ExportResult, diff: float, atol: float) -> ExportResult:
    result.check["max_abs_diff"] = diff
    if not diff <= atol:  # also catches NaN
        raise AlexNetError(f"{result.format} export differs from PyTorch by {diff:.3g} (> {atol:g}); {result.out} kept for inspection")
    return result


@contextmanager
def _quiet_onnx_exporter() -> Iterator[None]:
    """Silence what torch's ONNX exporter says that is about itself, not about the user's model: one
    warning line per torchvision op it skips because torchvision is not installed (this project never
    needs it) and pytree's LeafSpec deprecation. Everything else it says still reaches the user."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def export_onnx(model: nn.Module, out: str | os.PathLike[str], *, input_size: int, in_chans: int = 3,
                opset: int = 18, check: bool = True, atol: float = MAX_ABS_DIFF,
                preprocess: Preprocess | None = None) -> ExportResult:  # fmt: skip
    """Write `model` as ONNX (input "images" (N, C, S, S), output "logits", N dynamic) and check it.

    The check runs a batch of 3 (the export saw 2) in onnxruntime; with `preprocess`, its
    images are random pixels normalized the way the checkpoint's model expects.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = _example(2, in_chans, input_size, seed=0)
    try:
        with _eval_on_cpu(model) as net, _quiet_onnx_exporter(), atomic_path(out) as tmp:
            torch.onnx.export(
                net, (example,), str(tmp), dynamo=True, opset_version=opset, verbose=False,
                input_names=["images"], output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                external_data=False,
            )  # fmt: skip
    except DiskFullError:
        raise
    except Exception as exc:
        raise AlexNetError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    result = ExportResult("onnx", str(out), out.stat().st_size, {"opset": opset, "dynamic_batch": True})
    if not check:
        return result
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = _example(3, in_chans, input_size, seed=1, pp=preprocess)  # a batch size the export never saw
    (got,) = session.run(["logits"], {"images": x.numpy()})
    want = _reference(model, x)
    result.check.update(runtime=f"onnxruntime {ort.__version__}", batch=int(x.shape[0]), max_abs_output=float(want.abs().max()))
    return _checked(result, _max_diff(torch.from_numpy(got), want), atol)


def export_torchscript(model: nn.Module, out: str | os.PathLike[str], *, input_size: int, in_chans: int = 3,
                       check: bool = True, atol: float = MAX_ABS_DIFF,
                       preprocess: Preprocess | None = None) -> ExportResult:  # fmt: skip
    """torch.jit.trace the eval-mode model; the file loads with torch.jit.load, no alexnet needed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _eval_on_cpu(model) as net, torch.no_grad(), warnings.catch_warnings():
        # The tracer flags the models' static shape checks (pad sizes, the pool5 shape test):
        # shapes other than the batch are fixed for an exported model, so the trace holds.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net, _example(2, in_chans, input_size, seed=0), check_trace=False)
    buffer = io.BytesIO()  # torch.jit's file writer aborts the process on a full disk: write our own way
    torch.jit.save(traced, buffer)
    write_bytes_atomic(out, buffer.getvalue())
    result = ExportResult("torchscript", str(out), out.stat().st_size, {"dynamic_batch": True})
    if not check:
        return result
    loaded = torch.jit.load(str(out), map_location="cpu")
    x = _example(3, in_chans, input_size, seed=1, pp=preprocess)
    want = _reference(model, x)
    with torch.no_grad():
        diff = _max_diff(loaded(x), want)
    result.check.update(runtime=f"torch.jit {torch.__version__}", batch=int(x.shape[0]), max_abs_output=float(want.abs().max()))
    return _checked(result, diff, atol)


def _json_safe(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def export_safetensors(ckpt: dict[str, Any], out: str | os.PathLike[str], *, check: bool = True) -> ExportResult:
    """The checkpoint's weights as safetensors; arch, options, class names, preprocessing in the metadata."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in ckpt["state_dict"].items()}
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "arch": ckpt["arch"],
        "model_config": json.dumps(_json_safe(ckpt["model_config"])),
        "class_names": json.dumps(ckpt.get("class_names")),
        "preprocess": json.dumps(ckpt.get("preprocess")),
    }
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    result = ExportResult("safetensors", str(out), out.stat().st_size)
    if check:
        model, _ = load_safetensors(out)
        reloaded = model.state_dict()
        exact = all(torch.equal(reloaded[k], v) for k, v in tensors.items())
        result.check.update(reloaded_with="create_model", max_abs_diff=0.0 if exact else float("nan"))
        if not exact:
            raise AlexNetError(f"{out}: reloaded weights differ from the checkpoint's")
    return result


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded metadata of an alexnet safetensors export (arch, model_config, class_names, preprocess)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise CheckpointError(f"cannot read {path} as safetensors: {exc}") from None
    if meta.get("format") != SAFETENSORS_FORMAT or "arch" not in meta:
        raise CheckpointError(f"{path} is safetensors but not an alexnet export (no arch/config metadata)")
    return {
        "arch": meta["arch"],
        "model_config": json.loads(meta["model_config"]),
        "class_names": json.loads(meta.get("class_names", "null")),
        "preprocess": json.loads(meta.get("preprocess", "null")),
    }


def load_safetensors(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a safetensors export: (create_model(arch, **config) with the weights, metadata)."""
    info = read_safetensors_metadata(path)
    model = create_model(info["arch"], **info["model_config"])
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {info['arch']}: {str(exc).splitlines()[0]}") from None
    return model, info


def export_checkpoint(checkpoint: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str], *,
                      opset: int = 18, check: bool = True) -> ExportResult:  # fmt: skip
    """`alexnet export`: write a checkpoint in `fmt`, sized by the input crop its preprocessing records."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    ckpt = load_checkpoint(checkpoint)
    if fmt == "safetensors":
        return export_safetensors(ckpt, out, check=check)
    if fmt == "caffe-npy":
        if ckpt["arch"] != "alexnet":
            raise ConfigError(f"the bvlc_alexnet layout holds the grouped `alexnet` only, not {ckpt['arch']!r}")
        # The .npy records weights only; whoever reads it assumes bvlc_alexnet's LRN and input size.
        differ = {k: ckpt["model_config"].get(k) for k, v in BVLC_MODEL_OPTIONS.items() if ckpt["model_config"].get(k) != v}
        if differ:
            raise ConfigError(f"caffe-npy stores no LRN constants or input size and readers assume {BVLC_MODEL_OPTIONS}; "
                              f"this model has {differ}: export it as safetensors instead")
        path = save_npy_object(state_dict_to_bvlc(model_from_checkpoint(ckpt).state_dict()), out)
        return ExportResult("caffe-npy", str(path), path.stat().st_size)
    model = model_from_checkpoint(ckpt).eval()
    pp = preprocess_of(ckpt)
    if fmt == "onnx":
        return export_onnx(model, out, input_size=pp.crop, in_chans=pp.in_chans, opset=opset, check=check, preprocess=pp)
    return export_torchscript(model, out, input_size=pp.crop, in_chans=pp.in_chans, check=check, preprocess=pp)
