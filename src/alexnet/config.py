"""Run configuration: frozen dataclasses, a YAML file and `key=value` overrides, named presets.

Unknown keys and wrong types are ConfigErrors naming the key. Nested sections are addressed
with dots on the command line: `optim.lr=0.02 data.crop=24 model.dropout=0.3`.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

OPTIMIZERS = ("paper-sgd", "sgd", "nesterov")
SCHEDULES = ("plateau", "step", "cosine", "onecycle", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEAN_MODES = ("image", "channel", "none")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "alexnet"
    options: dict[str, Any] = field(default_factory=dict)  # passed to create_model (num_classes from the data)


@dataclass(frozen=True)
class DataConfig:
    """The data and its augmentation; which op reads which key, and their random draws: data/augment.py."""

    crop: int = 224  # random crops of this side from the store image (section 4.1)
    pad: int = 0  # pixels added on every side before the random crop (CIFAR-10: pad 4, crop 32)
    pad_mode: str = "reflect"  # what the padding holds: the mirrored border ("reflect") or "zeros"
    flip: bool = True  # horizontal reflections
    lighting: float = 0.1  # std of the PCA lighting alphas; 0 disables it
    mean: str = "image"  # subtract the mean image (the paper), per-channel mean, or nothing
    divide_std: bool = False  # also divide by the per-channel std (not in the paper)
    workers: int = 2  # background batch readers
    val_split: str = "val"  # keeps `best` and drives the plateau schedule; without it: test split, curves only
    ten_crop_eval: bool = False  # validation with the paper's 10 views (slower)
    flip_eval: bool = False  # average the prediction of each image and its mirror at validation
    train_subset: int = 0  # train on a fixed class-balanced sample of this many training images (0: all)
    train_subset_seed: int = 0  # which sample: the same seed draws the same images (the probe's --per-class too)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "paper-sgd"  # section 5's update rule; "sgd"/"nesterov" are torch.optim.SGD
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"
    plateau_patience: int = 1  # validations without improvement before dividing lr by 10
    plateau_threshold: float = 1e-3  # an improvement smaller than this (absolute error) does not count
    max_drops: int = 3  # the paper divided the lr three times before stopping
    step_epochs: int = 30  # "step": divide by 10 every this many epochs
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    final_lr_fraction: float = 0.0  # cosine / onecycle end at lr * this
    head_lr_mult: float = 1.0  # lr multiplier of the layers `train --init` starts afresh (Caffe's lr_mult)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 90
    batch_size: int = 128  # global batch (split across ranks)
    seed: int = 0
    # auto: bf16 autocast where the device has bf16 arithmetic, else fp32 (runtime.resolve_precision);
    # bf16 anywhere (emulated, 11-14x slower, on CPUs without it); fp16 on GPU only
    precision: str = "auto"
    channels_last: bool = True  # NHWC: oneDNN convs and max-pool are much faster on CPU (docs/benchmarks.md)
    compile: bool = False
    deterministic: bool = False  # deterministic kernels (exact resume and DDP-equality tests)
    log_every: int = 50  # steps between metric lines (the only host syncs in the loop)
    checkpoint_every: int = 500  # steps between `last` checkpoints (also at every epoch end)
    eval_every: int = 1  # epochs between validations
    max_steps: int = 0  # stop after this many steps in all (0: no limit); for tests and smoke runs
    stop_train_error: float = 0.0  # stop once a log interval's running training error is at most this (0: never; Fig. 1)
    device: str = "auto"  # auto: cuda if present, else cpu
    freeze: str = ""  # fix every layer up to and including this one (conv1..conv5, fc6, fc7); train/transfer.py

    def __post_init__(self) -> None:
        _check_choice("optim.name", self.optim.name, OPTIMIZERS)
        _check_choice("optim.schedule", self.optim.schedule, SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("data.mean", self.data.mean, MEAN_MODES)
        for key, value in (("epochs", self.epochs), ("batch_size", self.batch_size), ("log_every", self.log_every),
                           ("checkpoint_every", self.checkpoint_every), ("eval_every", self.eval_every),
                           ("data.crop", self.data.crop)):  # fmt: skip
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        if self.data.train_subset < 0:
            raise ConfigError(f"data.train_subset must be >= 0 (0: the whole training split), got {self.data.train_subset}")
        if not 0 <= self.stop_train_error < 1:
            raise ConfigError(f"stop_train_error must be in [0, 1), got {self.stop_train_error}")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.optim.lr}")
        if self.optim.head_lr_mult <= 0:
            raise ConfigError(f"optim.head_lr_mult must be > 0, got {self.optim.head_lr_mult}")
        if not 0 <= self.optim.label_smoothing < 1:
            raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {self.optim.label_smoothing}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


# The paper's ImageNet recipe (sections 4-5): batch 128, SGD with its update rule, momentum 0.9,
# weight decay 5e-4, lr 0.01 divided by 10 on a validation plateau at most 3 times, 90 epochs,
# 224 crops + flips + PCA lighting from 256 images, mean image subtracted.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    # The CPU demo: alexnet-small on Fashion-MNIST 28x28 on 2 cores. A short run needs a short
    # schedule (Nesterov one-cycle, label smoothing) instead of the paper's plateau rule, light
    # dropout (0.5 under-fits in 10 epochs), flips without translations, and channels_last (bf16
    # where the CPU has it, by precision auto; fp32 elsewhere). Widths 32-64-96-96-64: the same
    # validation accuracy as 48-96-144-144-96 at 1.8-1.9x the images/s in fp32, which an AVX2 CPU
    # without bf16 needs. How each setting was chosen: docs/reproduction.md.
    "demo": {
        "model": {"arch": "alexnet-small", "options": {"init": "kaiming", "widths": [32, 64, 96, 96, 64],
                                                     "fc": [512, 512], "dropout": 0.1}},
        "data": {"crop": 28, "pad": 0, "flip": True, "lighting": 0.0, "mean": "channel", "divide_std": True,
                 "workers": 1, "flip_eval": True},
        "optim": {"name": "nesterov", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle",
                  "warmup_epochs": 1.0, "label_smoothing": 0.1},
        "epochs": 10,
        "eval_every": 5,
        "batch_size": 128,
        "channels_last": True,
        "log_every": 100,
        "checkpoint_every": 400,
    },
}  # fmt: skip

# CIFAR-10 on 2 CPU cores in under 25 minutes: the demo recipe at widths 48-96-144-144-96 with
# CaffeNet's LRN after the pool (4x fewer values to normalise: 1.2x the images/s), the paper's
# augmentation (padded random crops, flips, PCA lighting) and 70 epochs of the one-cycle schedule. Chosen on the validation
# split; each decision and its effect: docs/reproduction.md.
PRESETS["cifar10"] = copy.deepcopy(PRESETS["demo"])
PRESETS["cifar10"]["model"]["options"].update(widths=[48, 96, 144, 144, 96], lrn_position="after-pool")
PRESETS["cifar10"]["data"].update(crop=32, pad=4, lighting=0.1)
PRESETS["cifar10"]["epochs"] = 70

# Fine-tuning a trained net (`train --init SOURCE`): the network, crop and normalisation are the
# source's; the cifar10 recipe's augmentation and one-cycle schedule at a fifth of its lr (0.05
# undoes the source's features), 30 epochs, the new fc8 at the same lr (10x it was no better and
# diverged at lr 0.05). Chosen on the val split of CIFAR-10's second half, 100 images a class,
# from a net trained on the first: docs/reproduction.md#transfer-learning.
PRESETS["finetune"] = copy.deepcopy(PRESETS["cifar10"])
del PRESETS["finetune"]["model"]
PRESETS["finetune"]["optim"].update(lr=0.01)
PRESETS["finetune"]["epochs"] = 30


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check/convert a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin is dict or typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; valid keys: {', '.join(prefix + n for n in sorted(names))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, value, typ)
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = _merge(out[k], v)
        elif k == "options" and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def parse_override(item: str) -> dict[str, Any]:
    """`optim.lr=0.02` -> {"optim": {"lr": 0.02}} (values parsed as YAML scalars)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value")
    key, raw = item.split("=", 1)
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    value = yaml.safe_load(raw) if raw else ""
    node: dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for part in parts[:-1]:
        cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value
    return node


def load_config(
    preset: str | None = None, file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Preset, then YAML file, then key=value overrides, each on top of the last."""
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        data = _merge(data, PRESETS[preset])
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = _merge(data, loaded)
    for item in overrides:
        data = _merge(data, parse_override(item))
    return _build(TrainConfig, data)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, data)
