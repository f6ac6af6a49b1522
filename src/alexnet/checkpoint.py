"""Checkpoints: one file holds everything needed to rebuild, use and resume a model.

    {
      "format": "alexnet-checkpoint", "version": 1,
      "arch": "alexnet", "model_config": {...create_model options...},
      "state_dict": {...},
      "class_names": ["tench", ...] or None,
      "preprocess": Preprocess.to_dict(),         # how images must be prepared for this model
      "mean_image": uint8-scale float tensor (C, S, S) or None,   # the paper's mean image
      "train_state": {...} or None,               # optimizer, schedule, epoch, step, RNG (train.py)
      "meta": {...}                               # free-form: git commit, versions, metrics
    }

Writes are atomic (temp file in the same folder, fsync, rename), so a crash, a kill or a full
disk leaves the previous file intact. Loads use `torch.load(weights_only=True)`: no pickled
code runs.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .files import atomic_open
from .models import empty_model, model_entry
from .preprocess import Preprocess

FORMAT = "alexnet-checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """torch.save to a temp file beside `path`, fsync, then rename over it (files.atomic_open)."""
    with atomic_open(path) as f:
        torch.save(obj, f)
    return Path(path)


def make_checkpoint(
    model: nn.Module,
    *,
    class_names: list[str] | None = None,
    preprocess: Preprocess | None = None,
    train_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of `model` (its weights, or `state_dict` when given: the two-tower split
    saves its weights in the grouped layout this way). Without `preprocess`, the model's own
    declared input (Preprocess.for_model: its size and channels, its default normalisation)."""
    arch = getattr(model, "arch", None)
    if arch is None:
        raise CheckpointError("model was not built by create_model (no .arch): cannot be checkpointed")
    state = {k: v.detach().cpu() for k, v in (state_dict if state_dict is not None else model.state_dict()).items()}
    config = dict(getattr(model, "config", {}))
    for k, v in config.items():  # tuples become lists so weights_only loading accepts them
        if isinstance(v, tuple):
            config[k] = list(v)
    pp = preprocess or Preprocess.for_model(model)
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "model_config": config,
        "state_dict": state,
        "class_names": list(class_names) if class_names is not None else None,
        "preprocess": pp.to_dict(),
        "mean_image": None if pp.mean_image is None else pp.mean_image.detach().cpu().float(),
        "train_state": train_state,
        "meta": meta or {},
    }


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, **kwargs: Any) -> Path:
    """Atomically write `model` and its metadata (see make_checkpoint) to `path`."""
    return atomic_save(make_checkpoint(model, **kwargs), path)


def torch_load_safely(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """`torch.load(weights_only=True)`: tensors and plain data only, no pickled code runs.

    A file that holds anything else is refused in one line of ours. torch's own message goes on to
    advise `weights_only=False`, which would run whatever the file's pickle says; ours says what to
    do instead, and only for a file whose origin the user trusts.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only load failed" not in text.lower():
            raise CheckpointError(f"cannot read {what} {path}: {text.splitlines()[0]}") from None
        if "GLOBAL" not in text:  # the unpickler met bytes that are no pickle at all, not a class or function
            raise CheckpointError(f"cannot read {what} {path}: it is not a file that torch.save wrote") from None
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain data, so it is not loaded (nothing in it ran); "
            "if it comes from a training run you trust, save its weights alone (a state_dict of tensors, "
            "torch.save(model.state_dict(), F)) where it was made and bring them in with `alexnet import-weights F`"
        ) from None
    except Exception as exc:
        raise CheckpointError(f"cannot read {what} {path}: {str(exc).splitlines()[0]}") from None


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint safely (weights_only). A missing, corrupt or foreign file is a CheckpointError."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path} is a folder with no best.pt or last.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    ckpt = torch_load_safely(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an alexnet checkpoint (use `alexnet import-weights` for other formats)")
    if ckpt.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt['version']}; this alexnet reads up to {VERSION}")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any], **overrides: Any) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (strict)."""
    config = dict(ckpt["model_config"])
    config.update(overrides)
    model = empty_model(ckpt["arch"], **config)  # every weight comes from the (strict) load below
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit {ckpt['arch']}: {str(exc).splitlines()[0]}") from None
    return model


def preprocess_of(ckpt: dict[str, Any]) -> Preprocess:
    """The checkpoint's test-time preprocessing, mean image included."""
    pp = Preprocess.from_dict(ckpt["preprocess"], ckpt.get("mean_image"))
    return _without_legacy_default(ckpt, pp)


def _without_legacy_default(ckpt: dict[str, Any], pp: Preprocess) -> Preprocess:
    """Checkpoints saved without a preprocess by alexnet before models declared their input hold
    0-255 pixels at resize 256, crop 224 whatever the model's size, which a 28 or 32 px model
    cannot take: such a one is read at the model's declared sizes (the same pixel arithmetic)."""
    declared = model_entry(ckpt["arch"]).input_config(ckpt["model_config"])
    if pp.mean_image is None and pp == Preprocess.raw(pp.in_chans) and declared.test_resize < pp.crop:
        return Preprocess.raw(pp.in_chans, resize=declared.test_resize, crop=declared.input_size)
    return pp
