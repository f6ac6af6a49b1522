"""Named-layer activations: fc7 is the paper's 4096-d image descriptor (section 6.1).

A layer is named either by its paper name ("conv1" ... "conv5", "pool5", "fc6", "fc7", "fc8",
"local3", ...), which means the layer's output after its nonlinearity (what the paper calls
the layer's activations, e.g. fc7 = ReLU(W7 h6 + b7)), or by a module path from
`model.named_modules()` ("features.conv1", "classifier.fc7", "features.norm1"), which means
that module's raw output. The paper names are the layers the model declares (`feature_info`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from .spec import feature_info


def paper_layers(model: nn.Module) -> dict[str, str]:
    """Paper layer name -> module path whose output is that layer's activation (feature_info)."""
    return {layer.name: layer.module for layer in feature_info(model)}


def layer_names(model: nn.Module) -> list[str]:
    """Every name `activations` accepts: paper names first, then module paths."""
    return list(paper_layers(model)) + [n for n, _ in model.named_modules() if n]


def _resolve(model: nn.Module, name: str) -> nn.Module:
    table = paper_layers(model)
    modules = dict(model.named_modules())
    path = table.get(name, name)
    if path not in modules or not path:
        raise ConfigError(f"model has no layer {name!r}; paper layers: {', '.join(table)} (or a module path)")
    return modules[path]


def activations(model: nn.Module, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """Run `model(x)` and return the outputs of the named layers (copies: in-place ReLUs can't touch them)."""
    targets = {name: _resolve(model, name) for name in layers}
    found: dict[str, Tensor] = {}
    handles = []
    for name, module in targets.items():

        def hook(_m: nn.Module, _inp: object, out: Tensor, name: str = name) -> None:
            found[name] = out.clone()

        handles.append(module.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def conv1_weight(model: nn.Module) -> Tensor:
    """The image layer's kernels (K, C, kh, kw): the first convolution of the model."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.weight
    raise ConfigError(f"{type(model).__name__} has no convolution layer")


def towers(model: nn.Module) -> int:
    """How many towers conv1's kernels feed (section 3.2), as the model declares (feature_info).

    conv2 sees conv1_maps / groups maps per kernel, so with groups=2 kernels [0, K/2) feed tower 1
    and [K/2, K) tower 2, the halves the paper's Fig. 3 shows apart.
    """
    return feature_info(model).towers
