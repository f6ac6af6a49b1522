"""Per-layer table of a model: output shape, parameters, multiply-adds, neurons (PAPER.md section 3).

Neurons are the output units of the learned layers (conv, locally connected, fc): for the
paper net at 55x55 that is 290,400 + 186,624 + 64,896 + 64,896 + 43,264 + 4,096 + 4,096 +
1,000 = 659,272, the paper's "650,000 neurons". Multiply-adds count the learned layers only
(bias adds, ReLU, LRN and pooling are not multiply-adds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .models import input_config
from .models.layers import LocallyConnected2d

LEARNED = (nn.Conv2d, nn.Linear, LocallyConnected2d)


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    neurons: int


@dataclass(frozen=True)
class Summary:
    arch: str
    input_shape: tuple[int, ...]
    rows: tuple[LayerRow, ...]
    params: int
    macs: int
    neurons: int
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def format(self) -> str:
        head = f"{'layer':<22}{'type':<20}{'output':>16}{'params':>14}{'mult-adds':>16}{'neurons':>12}"
        title = f"{self.arch}, input {'x'.join(map(str, self.input_shape))}" + (f" ({self.note})" if self.note else "")
        lines = [title, head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(map(str, r.output_shape))
            lines.append(f"{r.name:<22}{r.kind:<20}{shape:>16}{r.params:>14,}{r.macs:>16,}{r.neurons:>12,}")
        lines.append("-" * len(head))
        lines.append(f"{'total':<58}{self.params:>14,}{self.macs:>16,}{self.neurons:>12,}")
        return "\n".join(lines)


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    per_sample = out[0].numel()
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return per_sample * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    if isinstance(module, LocallyConnected2d):
        return per_sample * module.in_channels * module.kernel_size**2
    return 0


def summarize(model: nn.Module, input_size: int | None = None, arch: str | None = None) -> Summary:
    """Trace one image through `model` (eval mode, no grad) and tabulate every leaf module; at
    the model's declared input (models.input_config) unless `input_size` says otherwise."""
    declared = input_config(model)
    in_chans = declared.in_chans
    if input_size is None:
        input_size = declared.input_size
    rows: list[LayerRow] = []
    handles = []
    for name, module in model.named_modules():
        if list(module.children()):
            continue

        def hook(m: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
            learned = isinstance(m, LEARNED)
            rows.append(
                LayerRow(
                    name=name,
                    kind=type(m).__name__,
                    output_shape=tuple(out.shape[1:]),
                    params=sum(p.numel() for p in m.parameters(recurse=False)),
                    macs=_macs(m, out),
                    neurons=out[0].numel() if learned else 0,
                )
            )

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, input_size, input_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return Summary(
        arch=arch or str(getattr(model, "arch", type(model).__name__)),
        input_shape=(in_chans, input_size, input_size),
        rows=tuple(rows),
        params=sum(p.numel() for p in model.parameters()),
        macs=sum(r.macs for r in rows),
        neurons=sum(r.neurons for r in rows),
        note=_padding_note(model, input_size),
    )


def _padding_note(model: nn.Module, size: int) -> str:
    padding = getattr(model, "input_padding", None)
    pad = padding(size) if padding is not None else 0
    return f"zero-padded right/bottom by {pad} to {size + pad} so conv1 tiles it" if pad else ""
