"""Model registry: `create_model(name, num_classes, **options)`, `list_models()`, and each model's
declared input (`input_config(model)`: size, channels, test-time resize, default normalisation)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from .spec import InputConfig


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    description: str
    defaults: dict[str, Any]
    data: InputConfig  # at the default options

    def options(self) -> dict[str, Any]:
        """Every option the model takes, with its default (num_classes included)."""
        return dict(self.defaults)

    def input_config(self, options: Mapping[str, Any] | None = None) -> InputConfig:
        """The input of this model built with `options` (the rest at their defaults)."""
        return self.data.resolved({**self.defaults, **(options or {})})


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, description: str, defaults: dict[str, Any] | None = None, *, data: InputConfig | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register `factory(**options)`. `defaults` lists every option; by default the factory's
    keyword-only parameters and their defaults. `data` declares the model's input (default: 224
    px, 3 channels, from 256 px images, unnormalised); its `input_size` and `in_chans` are the
    options of those names where the model has them."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        assert name not in _REGISTRY, f"model {name} registered twice"
        opts = defaults
        if opts is None:
            sig = inspect.signature(factory)
            opts = {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}
        assert "num_classes" in opts, f"model {name}: options must include num_classes"
        declared = data or InputConfig()
        resolved = declared.resolved(opts)
        assert resolved.in_chans == declared.in_chans or declared.mean is None, f"model {name}: mean for other channels"
        _REGISTRY[name] = ModelEntry(name, factory, description, dict(opts), resolved)
        return factory

    return wrap


def list_models() -> list[str]:
    """Names of every registered model, in registration order."""
    return list(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; ConfigError naming the valid models."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}") from None


def create_model(name: str, num_classes: int | None = None, **options: Any) -> nn.Module:
    """Build a registered model. Unknown names and options raise ConfigError naming the valid ones.

    `num_classes` defaults to the model's own default (1000 for the ImageNet nets, 10 for the
    small ones).

    The returned module carries `arch` (the name) and `config` (every option, resolved: its one
    config, what checkpoints store), enough to rebuild it: `create_model(m.arch, **m.config)`.
    `input_config(m)` and `feature_info(m)` read what it declares about its input and layers.
    """
    entry = model_entry(name)
    valid = entry.options()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"model {name!r} has no option {', '.join(unknown)}; valid options: {', '.join(valid)}")
    resolved = {**valid, **options}
    if num_classes is not None:
        resolved["num_classes"] = num_classes
    n = resolved["num_classes"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {n!r}")
    model = entry.factory(**resolved)
    model.arch = name  # type: ignore[assignment]
    model.config = resolved  # type: ignore[assignment]
    return model


def input_config(model: nn.Module) -> InputConfig:
    """The input `model` is built for, resolved from its arch and options (InputConfig): what
    summary, the benchmarks and a checkpoint saved without a preprocess use. A module not built
    by create_model declares none: ConfigError."""
    arch, config = getattr(model, "arch", None), getattr(model, "config", None)
    if arch is None or not isinstance(config, Mapping):
        raise ConfigError(f"{type(model).__name__} was not built by create_model: it declares no input size")
    return model_entry(arch).input_config(config)


def empty_model(name: str, num_classes: int | None = None, **options: Any) -> nn.Module:
    """create_model without the weight init: built on the meta device, then allocated (uninitialised).

    For a model whose every parameter a strict `load_state_dict` is about to overwrite (the
    models have no buffers); saves ~1 s of random init on the 61M-parameter nets.
    """
    with torch.device("meta"):
        model = create_model(name, num_classes, **options)
    return model.to_empty(device="cpu")
