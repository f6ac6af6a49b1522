"""Weight initialisations: the paper's (section 5) and the alternatives."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from ..errors import ConfigError
from .layers import LocallyConnected2d

INITS = ("paper", "pytorch", "kaiming")


def init_weights(
    model: nn.Module, scheme: str, bias_one: Iterable[str] = (), std: float | dict[str, float] = 0.01
) -> None:
    """Initialise every conv, linear and locally connected layer of `model` in place.

    - "paper": weights N(0, std) (0.01 in the paper, or per layer name), biases 1 on the layers
      named in `bias_one` (conv2, conv4, conv5, fc6, fc7 in the paper: positive inputs to the
      ReLUs early on) and 0 elsewhere.
    - "pytorch": leave torch's defaults (kaiming-uniform with a=sqrt(5), uniform biases).
    - "kaiming": He-normal weights (fan_out, for ReLU), zero biases.
    """
    if scheme not in INITS:
        raise ConfigError(f"unknown init {scheme!r}; choose one of {INITS}")
    if scheme == "pytorch":
        return
    ones = set(bias_one)
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear, LocallyConnected2d)):
            continue
        short = name.rsplit(".", 1)[-1]
        if scheme == "paper":
            layer_std = std[short] if isinstance(std, dict) else std
            nn.init.normal_(module.weight, 0.0, layer_std)
            nn.init.constant_(module.bias, 1.0 if short in ones else 0.0)
        elif isinstance(module, LocallyConnected2d):  # weight (positions, out, fan_in): fan_out = out * k * k
            nn.init.normal_(module.weight, 0.0, (2.0 / (module.out_channels * module.kernel_size**2)) ** 0.5)
            nn.init.zeros_(module.bias)
        else:
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
