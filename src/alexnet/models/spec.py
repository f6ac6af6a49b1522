"""What a model declares about itself besides its weights (timm's `pretrained_cfg` and `feature_info`).

- `InputConfig`: the input it is built for (side, channels), what a test image becomes before
  it (short side resized, the centre crop) and its default normalisation. Each registry entry
  declares one; `input_config(model)` (registry.py) resolves it with the model's options, so
  `alexnet-small` built with `input_size=32, in_chans=3` reads 32 px and 3 channels.
- `FeatureLayer`: a named layer whose output is one of the paper's activations ("conv1", "pool5",
  "fc7", ...): the module that gives it, its channels, its reduction and its towers. Each model
  declares its own in `__init__` as `self.feature_layers` (`declare_layers` below); every
  consumer reads them through `feature_info(model)`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from ..errors import ConfigError
from .layers import LocallyConnected2d

# torchvision's ImageNet statistics of 0-1 pixels (its AlexNet weights were trained with them)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputConfig:
    """The input a model is built for, and what a test image becomes before it by default.

    input_size: side of the square input; in_chans: its channels;
    resize: at test time the short side is scaled to this and the central square kept (the
    store image), then its centre `input_size` crop is fed; None: the input size itself (no crop);
    scale: multiplies 0-255 pixels (1/255 gives 0-1);
    mean, std: per channel in scaled units, subtracted / divided; None: not applied;
    geometry: how a test image file becomes the resized square (Preprocess.geometry). A model
    trained here gets its store's statistics instead (Preprocess.for_training); these are the
    defaults of a model saved without a preprocess.
    """

    input_size: int = 224
    in_chans: int = 3
    resize: int | None = 256  # the paper's 256x256 images (section 2); torchvision's Resize(256)
    scale: float = 1.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    geometry: str = "square"  # how an image file is read (Preprocess.geometry): "torchvision" for its weights

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.input_size < 1 or self.in_chans < 1:
            raise ConfigError(f"input_size and in_chans must be >= 1, got {self.input_size} and {self.in_chans}")
        if self.resize is not None and self.resize < 1:
            raise ConfigError(f"resize must be >= 1 or None, got {self.resize}")
        if not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.in_chans:
                raise ConfigError(f"{name} has {len(value)} values for {self.in_chans} channels")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"std must be > 0, got {self.std}")

    @property
    def test_resize(self) -> int:
        """The short side a test image is scaled to: `resize`, at least the input size."""
        return max(self.resize or 0, self.input_size)

    def resolved(self, options: Mapping[str, Any]) -> InputConfig:
        """This config with a model's `input_size` and `in_chans` options. A normalisation declared
        for another channel count does not apply: such a model starts unnormalised."""
        size = int(options.get("input_size", self.input_size))
        chans = int(options.get("in_chans", self.in_chans))
        # another size or channel count is not the transform the geometry was declared for
        geometry = self.geometry if (size, chans) == (self.input_size, self.in_chans) else "square"
        if chans == self.in_chans:
            return replace(self, input_size=size, geometry=geometry)
        return replace(self, input_size=size, in_chans=chans, mean=None, std=None, geometry=geometry)


@dataclass(frozen=True)
class FeatureLayer:
    """One named layer: `module`'s output is the layer's activation (after its nonlinearity).

    channels: maps (or units, for a vector layer); reduction: input pixels per map pixel along
    a side (the product of the strides up to it), None for a vector layer; towers: how many
    towers its maps are split into (section 3.2: 2 on the paper net's conv layers), 1 if none.
    """

    name: str
    module: str
    channels: int
    reduction: int | None
    towers: int = 1

    @property
    def is_map(self) -> bool:
        return self.reduction is not None


@dataclass(frozen=True)
class FeatureInfo:
    """A model's named layers in the order it declares them (the last is its output)."""

    layers: tuple[FeatureLayer, ...] = ()

    def __iter__(self) -> Iterator[FeatureLayer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, name: object) -> bool:
        return any(layer.name == name for layer in self.layers)

    def __getitem__(self, name: str) -> FeatureLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ConfigError(f"model has no layer {name!r}; layers: {', '.join(self.names) or '(none)'}")

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def towers(self) -> int:
        """How many towers conv1's kernels feed (the halves Fig. 3 shows apart); 1 without a conv1."""
        return self["conv1"].towers if "conv1" in self else 1


def feature_info(model: nn.Module) -> FeatureInfo:
    """The named layers `model` declares (empty for a module that declares none, such as the
    two-tower split: its activations are reached by module path only)."""
    return FeatureInfo(tuple(getattr(model, "feature_layers", ())))


def declare_layers(model: nn.Module, paths: Sequence[tuple[str, str]],
                   towers: Mapping[str, int] | None = None) -> tuple[FeatureLayer, ...]:  # fmt: skip
    """FeatureLayers for (name, module path) pairs, in the order given: each layer's channels and
    reduction are read off the modules up to it. Modules must be registered in forward order
    (true of every model here: features, then classifier)."""
    wanted = {path: name for name, path in paths}
    assert len(wanted) == len(paths), f"a module path named twice in {paths}"
    found: dict[str, FeatureLayer] = {}
    channels, reduction = 0, 1
    vector = False  # past the first fully connected layer: units, not maps
    for path, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, LocallyConnected2d, nn.MaxPool2d, nn.AvgPool2d)):
            stride = m.stride
            reduction *= stride[0] if isinstance(stride, tuple) else int(stride)  # type: ignore[arg-type]
            if not isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
                channels = m.out_channels
        elif isinstance(m, nn.Linear):
            channels, vector = m.out_features, True
        if path in wanted:
            name = wanted[path]
            found[name] = FeatureLayer(name, path, channels, None if vector else reduction, (towers or {}).get(name, 1))
    missing = [name for name, _ in paths if name not in found]
    assert not missing, f"{type(model).__name__} declares layers with no module: {missing}"
    return tuple(found[name] for name, _ in paths)
