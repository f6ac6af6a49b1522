"""Training from a trained net: `train --init SOURCE`, `freeze: LAYER`, `optim.head_lr_mult`.

    source = InitSource.load("runs/cifar-a")        # anything Predictor.load takes
    cfg = source.adapt(cfg)                         # the source's network and crop, the run's recipe
    loaded, fresh = load_matching(model, source.state_dict, same_classes=source.class_names == store.class_names)

The network is the source's (its arch and options; `model.options.dropout` is the run's), sized
for the store's classes. Every weight whose name and shape match is copied, the output layer's only
for the same classes (names and order); the rest (fc8 for other classes) keep the init the model
was built with, and `describe_fresh` names them.
The run feeds the net what the source was trained on: its normalisation (mean image resized to
the store's images, or channel means and std), its crop; a store whose images are smaller than
that crop is refused with the `prepare --size` that fixes it (no silent upsampling: a 32 px image
blown up to 224 costs ~50x the compute and holds no more detail).

Freezing `LAYER` fixes every parameter up to and including it (no gradient, no weight decay: it
is left out of the optimizer) and keeps the frozen part in eval mode, up to the next trainable
layer: the dropout after a frozen fc7 is off, as in a linear probe of fc7.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_checkpoint, preprocess_of
from ..config import ModelConfig, TrainConfig
from ..data import Store
from ..errors import ConfigError, DataError
from ..models import feature_info
from ..preprocess import Preprocess

NORMALISATIONS = ("source", "data")  # the source net's input statistics, or the store's (data.mean, data.divide_std)


@dataclass(frozen=True)
class InitSource:
    """The trained net a run starts from."""

    path: str
    arch: str
    options: dict[str, Any]  # its create_model options, num_classes included
    state_dict: dict[str, Tensor]
    preprocess: Preprocess
    class_names: list[str] | None

    @classmethod
    def load(cls, source: str | os.PathLike[str]) -> InitSource:
        """A checkpoint file, a run folder or imported weights; CheckpointError naming a wrong one."""
        ckpt = load_checkpoint(source)
        return cls(str(source), str(ckpt["arch"]), dict(ckpt["model_config"]), ckpt["state_dict"], preprocess_of(ckpt),
                   ckpt.get("class_names"))  # fmt: skip

    def adapt(self, cfg: TrainConfig) -> TrainConfig:
        """cfg training the source's network at the source's crop (the rest of the recipe is cfg's)."""
        options = {k: v for k, v in self.options.items() if k != "num_classes"}
        if "dropout" in cfg.model.options and "dropout" in options:
            options["dropout"] = cfg.model.options["dropout"]
        return replace(cfg, model=ModelConfig(self.arch, options), data=replace(cfg.data, crop=self.preprocess.crop))

    def check_store(self, store: Store) -> None:
        """A DataError when the store's images cannot be fed to the source's net."""
        pp = self.preprocess
        if store.channels != pp.in_chans:
            raise DataError(f"{store.path.parent} holds {store.channels}-channel images and {self.path} takes "
                            f"{pp.in_chans}: prepare the images with {pp.in_chans} channels")  # fmt: skip
        if store.size < pp.crop:
            raise DataError(
                f"{self.path} takes {pp.crop}x{pp.crop} crops and {store.path.parent} holds {store.size}x{store.size} "
                f"images: prepare them at the source's size, `alexnet prepare IMAGES OUT --size {pp.resize}`"
            )

    def preprocess_for(self, store: Store) -> Preprocess:
        """The source's normalisation for the store's images: its mean image resized to them, or its
        channel means and std as they are; its channel order and scale; its crop. The geometry is the
        store's (a net trained on store images reads files as prepare does)."""
        pp, size = self.preprocess, store.size
        mean_image = pp.mean_image
        if mean_image is not None and tuple(mean_image.shape[-2:]) != (size, size):
            mean_image = F.interpolate(mean_image[None].float(), size=(size, size), mode="bilinear",
                                       align_corners=False, antialias=size < mean_image.shape[-1])[0]  # fmt: skip
        return replace(pp, resize=size, mean_image=mean_image, geometry="square")  # the store's images: prepare's


def output_layer(model: nn.Module) -> str:
    """The module path of the model's last declared layer (fc8): its weights name the classes."""
    return feature_info(model).layers[-1].module


def load_matching(model: nn.Module, state: dict[str, Tensor], *, same_classes: bool = True) -> tuple[list[str], list[str]]:
    """Copy every tensor of `state` whose name and shape match `model`'s, the output layer's only
    when the classes are the same (`same_classes`: a 5-class fc8 trained on other classes fits in
    shape, not in meaning); (loaded, fresh) names, fresh being the model's tensors that kept their init."""
    own = model.state_dict()
    out = output_layer(model) + "."
    fit = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)
           and (same_classes or not k.startswith(out))}  # fmt: skip
    if not fit:
        raise ConfigError("the source net shares no weight of the same name and shape with this model")
    model.load_state_dict(fit, strict=False)
    return list(fit), [k for k in own if k not in fit]


def describe_fresh(model: nn.Module, state: dict[str, Tensor], fresh: list[str]) -> str:
    """'fc8 (weight 10x512 -> 5x512)': the layers that start from the init, with why."""
    if not fresh:
        return "none"
    own = model.state_dict()
    layers: dict[str, list[str]] = {}
    for key in fresh:
        module, _, tensor = key.rpartition(".")
        if key in state and tuple(state[key].shape) == tuple(own[key].shape):
            why = f"{tensor}: other classes"
        elif key in state:
            why = f"{tensor} {'x'.join(map(str, state[key].shape))} -> {'x'.join(map(str, own[key].shape))}"
        else:
            why = f"{tensor} not in the source"
        layers.setdefault(module.rpartition(".")[2] or module, []).append(why)
    return ", ".join(f"{name} ({'; '.join(whys)})" for name, whys in layers.items())


def frozen_part(model: nn.Module, layer: str) -> tuple[list[str], list[str]]:
    """(parameter names, leaf module paths) fixed by freezing everything up to and including `layer`:
    the parameters of every module before its output, and the modules held in eval mode (those and
    the parameter-free ones after it, up to the next layer with weights)."""
    info = feature_info(model)
    if layer not in info:
        raise ConfigError(f"freeze: {model.arch} has no layer {layer!r}; layers: {', '.join(info.names[:-1])}")
    if layer == info.names[-1]:
        raise ConfigError(f"freeze: {layer} is the output layer; freezing it leaves nothing to train")
    target = info[layer].module
    params: list[str] = []
    modules: list[str] = []
    reached = False
    for path, module in model.named_modules():
        if not path or next(module.children(), None) is not None:
            continue  # containers: their leaves are visited
        own = [n for n, _ in module.named_parameters(recurse=False)]
        if reached and own:
            break
        modules.append(path)
        params += [f"{path}.{n}" for n in own]
        reached = reached or path == target
    return params, modules


def freeze(model: nn.Module, layer: str) -> list[str]:
    """Fix the parameters up to and including `layer` (requires_grad False); the leaf module paths
    to hold in eval mode (`hold_eval`)."""
    params, modules = frozen_part(model, layer)
    named = dict(model.named_parameters())
    for name in params:
        named[name].requires_grad_(False)
    return modules


def hold_eval(model: nn.Module, modules: list[str]) -> None:
    """Put the frozen modules back in eval mode (after a model.train())."""
    for path in modules:
        model.get_submodule(path).eval()


def param_groups(model: nn.Module, fresh: list[str], head_lr_mult: float) -> list[dict[str, Any]] | None:
    """The optimizer's groups: trainable weights at the schedule's lr, the freshly initialised ones
    at `head_lr_mult` times it; None where one plain group does (nothing frozen, no multiplier)."""
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    if not trainable:
        raise ConfigError("every parameter is frozen: nothing to train")
    head = set(fresh) if head_lr_mult != 1.0 else set()
    if len(trainable) == len(named) and not head:
        return None
    groups = [{"params": [p for n, p in trainable if n not in head], "lr_mult": 1.0},
              {"params": [p for n, p in trainable if n in head], "lr_mult": float(head_lr_mult)}]  # fmt: skip
    return [g for g in groups if g["params"]]

