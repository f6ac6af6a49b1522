"""The paper's two-GPU split (section 3.2): each tower's half of the network on its own device.

`split_towers(model, ("cuda:0", "cuda:1"))` turns a grouped paper-family model (`alexnet`,
`caffenet`, `alexnet-small`, any `AlexNet`) into a module with the same outputs and
gradients whose tower t lives on devices[t]:

    conv1        maps [48t, 48t+48)      reads the whole image (the input goes to both devices)
    LRN, pool    on its own maps         (plus the neighbour's 2 boundary maps, see below)
    conv2 (g=2)  maps [128t, 128t+128)   reads its own 48 maps          no exchange
    conv3        maps [192t, 192t+192)   reads all 256 maps             exchange
    conv4, conv5 (g=2)                   read their own tower's maps    no exchange
    fc6, fc7     neurons [2048t, ...)    read all of the layer below    exchange
    fc8          on device 0             reads both halves of fc7       exchange

so the towers talk exactly where the paper's do: conv3's input and the fully connected
layers. The output lands on devices[0].

LRN at the tower boundary. The paper's GPUs normalised within their own maps (cuda-convnet
ran one response-norm layer per GPU). The grouped single-device model does not: its LRN
window slides across all 96 (then 256) maps, so maps 46 and 47 see 48 and 49 and vice versa.
To stay equal to the grouped model, which is the model every checkpoint holds, each tower
receives the n//2 = 2 maps on the far side of the boundary before its LRN (2 of 96 maps, a
55x55 slice each: small next to conv3's exchange). `lrn_exchange=False` gives the paper's
per-GPU normalisation instead, which differs from the grouped model in those 4 maps.

Parameters are new tensors on the two devices (a grouped weight cannot live on two devices),
so weights and optimizer state convert to and from the grouped layout: every grouped
parameter is its tower halves concatenated along dim 0 (`grouped_state_dict`,
`load_grouped_state_dict`, `grouped_optimizer_state`, `load_grouped_optimizer_state`,
`merge_towers`). Checkpoints stay in the grouped format.

Dropout draws its masks per device, so in training mode the two models agree in
distribution, not mask for mask; in eval mode (or dropout=0) they agree to float rounding.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..models import create_model
from ..models.alexnet import AlexNet, tile_pad
from ..models.layers import Linear
from ..models.lrn import LocalResponseNorm

# Modules without parameters that each tower can apply to its own maps.
_PER_TOWER = (nn.ReLU, nn.Tanh, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Identity)


def parse_devices(spec: str | tuple[str, str] | list[str]) -> tuple[str, str]:
    """"DEV0,DEV1" (e.g. "cuda:0,cuda:1", "cpu,cpu") -> two device strings, checked to exist."""
    parts = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else [str(p).strip() for p in spec]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--model-parallel takes two devices, DEV0,DEV1 (e.g. cuda:0,cuda:1), got {spec!r}")
    for p in parts:
        try:
            dev = torch.device(p)
        except RuntimeError:
            raise ConfigError(f"--model-parallel: {p!r} is not a device (cpu, cuda, cuda:1, ...)") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError(f"--model-parallel: {p} requested but CUDA is not available")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise ConfigError(f"--model-parallel: {p} requested but only {torch.cuda.device_count()} CUDA device(s)")
    return parts[0], parts[1]


def _half(t: Tensor, tower: int) -> Tensor:
    n = t.shape[0] // 2
    return t[tower * n : (tower + 1) * n]


class TwoTowerAlexNet(nn.Module):
    """A grouped AlexNet split over two devices; see the module docstring. Build with split_towers."""

    def __init__(self, model: AlexNet, devices: tuple[str, str], lrn_exchange: bool = True) -> None:
        super().__init__()
        if not isinstance(model, AlexNet):
            raise ConfigError(f"the two-tower split takes the paper's family (alexnet, caffenet, ...), not {type(model).__name__}")
        self.devices = (torch.device(devices[0]), torch.device(devices[1]))
        self.lrn_exchange = lrn_exchange
        self.arch: str | None = getattr(model, "arch", None)
        self.config: dict[str, Any] = dict(getattr(model, "config", {}))  # the grouped model's: input_config reads it
        self.num_classes, self.input_size, self.feature_shape = model.num_classes, model.input_size, model.feature_shape
        self.conv1 = model.conv1_geometry  # (kernel, stride, padding)
        self.towers = nn.ModuleList([nn.ModuleDict(), nn.ModuleDict()])
        self.plan: list[tuple[str, str]] = []  # (module name, kind) of the conv part
        self.head_plan: list[tuple[str, str]] = []  # the same for the fc part
        self.parts: OrderedDict[str, list[str]] = OrderedDict()  # grouped param -> split params, dim-0 order
        dtype = next(model.parameters()).dtype
        with torch.no_grad():
            for name, m in model.features.named_children():
                self._add_feature(name, m, dtype)
            linears = [n for n, m in model.classifier.named_children() if isinstance(m, nn.Linear)]
            for name, m in model.classifier.named_children():
                self._add_head(name, m, last=name == linears[-1], dtype=dtype)

    # ------------------------------------------------------------------ construction
    def _place(self, tower: int, name: str, module: nn.Module, dtype: torch.dtype) -> None:
        self.towers[tower][name] = module.to(device=self.devices[tower], dtype=dtype)

    def _per_tower(self, name: str, m: nn.Module, kind: str, dtype: torch.dtype, plan: list[tuple[str, str]]) -> None:
        if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
            raise ConfigError(f"layer {name} ({type(m).__name__}) has state; the two-tower split cannot place it")
        for t in range(2):
            self._place(t, name, copy.deepcopy(m), dtype)
        plan.append((name, kind))

    def _add_feature(self, name: str, m: nn.Module, dtype: torch.dtype) -> None:
        if isinstance(m, nn.Conv2d):
            if m.groups not in (1, 2) or m.out_channels % 2 or m.in_channels % 2 and m.groups == 2:
                raise ConfigError(f"{name}: groups={m.groups}, {m.out_channels} maps: cannot split into two towers")
            in_t = m.in_channels if m.groups == 1 else m.in_channels // 2
            for t in range(2):
                conv = nn.Conv2d(in_t, m.out_channels // 2, m.kernel_size, m.stride, m.padding, m.dilation,
                                 bias=m.bias is not None, padding_mode=m.padding_mode)  # fmt: skip
                conv.weight.copy_(_half(m.weight, t))
                if m.bias is not None:
                    conv.bias.copy_(_half(m.bias, t))
                self._place(t, name, conv, dtype)
            self._record_parts(f"features.{name}", name, ("weight", "bias") if m.bias is not None else ("weight",))
            self.plan.append((name, "conv-full" if m.groups == 1 else "conv-own"))
        elif isinstance(m, LocalResponseNorm):
            self._per_tower(name, m, "lrn", dtype, self.plan)
        elif isinstance(m, _PER_TOWER):
            self._per_tower(name, m, "local", dtype, self.plan)
        else:
            raise ConfigError(f"layer {name} ({type(m).__name__}) is not supported by the two-tower split")

    def _add_head(self, name: str, m: nn.Module, last: bool, dtype: torch.dtype) -> None:
        if isinstance(m, nn.Linear) and last:  # fc8: one layer on device 0 reading both towers
            self._place(0, name, copy.deepcopy(m), dtype)
            self.parts[f"classifier.{name}.weight"] = [f"towers.0.{name}.weight"]
            self.parts[f"classifier.{name}.bias"] = [f"towers.0.{name}.bias"]
            self.head_plan.append((name, "fc-last"))
        elif isinstance(m, nn.Linear):  # fc6, fc7: half the neurons per tower
            if m.out_features % 2:
                raise ConfigError(f"{name}: {m.out_features} neurons cannot be split into two towers")
            for t in range(2):
                fc = Linear(m.in_features, m.out_features // 2)
                fc.weight.copy_(_half(m.weight, t))
                fc.bias.copy_(_half(m.bias, t))
                self._place(t, name, fc, dtype)
            self._record_parts(f"classifier.{name}", name, ("weight", "bias"))
            self.head_plan.append((name, "fc-split"))
        elif isinstance(m, _PER_TOWER):
            self._per_tower(name, m, "local", dtype, self.head_plan)
        else:
            raise ConfigError(f"layer {name} ({type(m).__name__}) is not supported by the two-tower split")

    def _record_parts(self, grouped_prefix: str, name: str, attrs: tuple[str, ...]) -> None:
        for a in attrs:
            self.parts[f"{grouped_prefix}.{a}"] = [f"towers.0.{name}.{a}", f"towers.1.{name}.{a}"]

    # ------------------------------------------------------------------ forward
    def _gather(self, xs: list[Tensor]) -> list[Tensor]:
        """Both towers' maps on each device: the exchange at conv3 and the fc layers."""
        d0, d1 = self.devices
        return [torch.cat([xs[0], xs[1].to(d0)], 1), torch.cat([xs[0].to(d1), xs[1]], 1)]

    def _lrn(self, name: str, xs: list[Tensor]) -> list[Tensor]:
        a, b = xs
        lrn_a, lrn_b = self.towers[0][name], self.towers[1][name]
        if not self.lrn_exchange:
            return [lrn_a(a), lrn_b(b)]
        # The window reaches size//2 maps back and (size-1)//2 forward (models/lrn.py).
        back, fwd = min(lrn_a.size // 2, a.shape[1]), min((lrn_a.size - 1) // 2, b.shape[1])
        ext_a = torch.cat([a, b[:, :fwd].to(self.devices[0])], 1)
        ext_b = torch.cat([a[:, a.shape[1] - back :].to(self.devices[1]), b], 1)
        return [lrn_a(ext_a)[:, : a.shape[1]], lrn_b(ext_b)[:, back:]]

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Image batch (any device) -> [tower 0's pool5 maps on devices[0], tower 1's on devices[1]]."""
        ph, pw = tile_pad(x.shape[-2], *self.conv1), tile_pad(x.shape[-1], *self.conv1)  # as AlexNet does
        if ph or pw:
            x = nn.functional.pad(x, (0, pw, 0, ph))
        xs = [x.to(self.devices[0]), x.to(self.devices[1])]
        whole = True  # both devices hold the entire tensor (the input image), not halves
        for name, kind in self.plan:
            if kind == "conv-full":
                if not whole:
                    xs = self._gather(xs)
                whole = False
            elif kind == "conv-own" and whole:
                c = xs[0].shape[1] // 2
                xs, whole = [xs[0][:, :c], xs[1][:, c:]], False
            elif kind == "lrn":
                assert not whole, "LRN before the first conv"
                xs = self._lrn(name, xs)
                continue
            xs = [self.towers[t][name](xs[t]) for t in range(2)]
        return xs

    def forward_head(self, xs: list[Tensor]) -> Tensor:
        """[pool5 halves] -> class logits on devices[0]."""
        shape = (xs[0].shape[1] + xs[1].shape[1], *xs[0].shape[2:])
        if shape != self.feature_shape:
            raise ValueError(f"expected pool5 maps of shape {self.feature_shape}, got {shape}: "
                             f"this model takes {self.input_size}x{self.input_size} inputs")  # fmt: skip
        hs = [torch.flatten(xs[0], 1), torch.flatten(xs[1], 1)]
        out: Tensor | None = None
        for name, kind in self.head_plan:
            if kind == "fc-split":
                hs = self._gather(hs)
                hs = [self.towers[t][name](hs[t]) for t in range(2)]
            elif kind == "fc-last":
                out = self.towers[0][name](torch.cat([hs[0], hs[1].to(self.devices[0])], 1))
            elif out is None:
                hs = [self.towers[t][name](hs[t]) for t in range(2)]
            else:
                out = self.towers[0][name](out)
        assert out is not None
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------ grouped layout
    def _gather_params(self, what: str) -> OrderedDict[str, Tensor]:
        params = dict(self.named_parameters())
        out: OrderedDict[str, Tensor] = OrderedDict()
        for grouped, parts in self.parts.items():
            ts = [params[p] if what == "data" else params[p].grad for p in parts]
            if any(t is None for t in ts):
                continue
            out[grouped] = torch.cat([t.detach().cpu() for t in ts], 0)
        return out

    def grouped_state_dict(self) -> OrderedDict[str, Tensor]:
        """The weights in the grouped model's keys and shapes (CPU tensors), ready for a checkpoint."""
        return self._gather_params("data")

    def grouped_grads(self) -> OrderedDict[str, Tensor]:
        """Gradients in the grouped layout (parameters without a gradient are left out)."""
        return self._gather_params("grad")

    def load_grouped_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load grouped-layout weights (a checkpoint's state_dict) into the towers; keys must match exactly."""
        missing, unexpected = set(self.parts) - set(state_dict), set(state_dict) - set(self.parts)
        if missing or unexpected:
            raise ConfigError(f"grouped state_dict does not fit: missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for grouped, parts in self.parts.items():
                sizes = [params[p].shape[0] for p in parts]
                full = state_dict[grouped]
                if full.shape[0] != sum(sizes) or full.shape[1:] != params[parts[0]].shape[1:]:
                    raise ConfigError(f"{grouped}: shape {tuple(full.shape)} does not fit the towers")
                for p, chunk in zip(parts, torch.split(full, sizes, 0)):
                    params[p].copy_(chunk)

    def _optimizer_layout(self, optimizer: torch.optim.Optimizer) -> list[list[str]]:
        """Per param group, the grouped parameter names it holds (in grouped-model order)."""
        names = {id(p): n for n, p in self.named_parameters()}
        layout = []
        for group in optimizer.param_groups:
            held = {names.get(id(p)) for p in group["params"]}
            if None in held:
                raise ConfigError("the optimizer holds parameters that are not this model's")
            grouped = [g for g, parts in self.parts.items() if any(p in held for p in parts)]
            for g in grouped:
                if not all(p in held for p in self.parts[g]):
                    raise ConfigError(f"the two halves of {g} are in different optimizer param groups")
            layout.append(grouped)
        return layout

    def grouped_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """optimizer.state_dict() as if the optimizer ran on the grouped model (same param group layout).

        Per-parameter tensors shaped like their parameter (momentum, velocity, Adam moments)
        are concatenated like the weights; anything else (a step count) is taken from tower 0.
        """
        sd = optimizer.state_dict()
        params = dict(self.named_parameters())
        index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
        state: dict[int, dict[str, Any]] = {}
        groups = []
        gi = 0
        for packed, grouped in zip(sd["param_groups"], self._optimizer_layout(optimizer)):
            ids = []
            for g in grouped:
                parts = [params[p] for p in self.parts[g]]
                entries = [sd["state"].get(index[id(p)]) for p in parts]
                if all(e is not None for e in entries):
                    merged = {}
                    for key, v in entries[0].items():
                        if isinstance(v, Tensor) and v.dim() > 0 and v.shape == parts[0].shape:
                            merged[key] = torch.cat([e[key].detach().cpu() for e in entries], 0)
                        else:
                            merged[key] = v.detach().cpu() if isinstance(v, Tensor) else v
                    state[gi] = merged
                ids.append(gi)
                gi += 1
            groups.append({**{k: v for k, v in packed.items() if k != "params"}, "params": ids})
        return {"state": state, "param_groups": groups}

    def load_grouped_optimizer_state(self, optimizer: torch.optim.Optimizer, grouped_state: Mapping[str, Any]) -> None:
        """Load a grouped-layout optimizer state (from a checkpoint) into an optimizer over these towers."""
        params = dict(self.named_parameters())
        layout = self._optimizer_layout(optimizer)
        if len(layout) != len(grouped_state["param_groups"]):
            raise ConfigError("optimizer state has a different number of param groups")
        index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
        state: dict[int, dict[str, Any]] = {}
        groups = []
        for group, packed, grouped in zip(optimizer.param_groups, grouped_state["param_groups"], layout):
            if len(packed["params"]) != len(grouped):
                raise ConfigError("optimizer state does not fit this model (param counts differ)")
            for gid, g in zip(packed["params"], grouped):
                entry = grouped_state["state"].get(gid)
                if entry is None:
                    continue
                parts = [params[p] for p in self.parts[g]]
                sizes = [p.shape[0] for p in parts]
                for t, p in enumerate(parts):
                    split = {}
                    for key, v in entry.items():
                        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == sum(sizes) and v.shape[1:] == p.shape[1:]:
                            split[key] = torch.split(v, sizes, 0)[t].clone()
                        else:
                            split[key] = v.clone() if isinstance(v, Tensor) else v
                    state[index[id(p)]] = split
            ids = [index[id(p)] for p in group["params"]]
            groups.append({**{k: v for k, v in packed.items() if k != "params"}, "params": ids})
        optimizer.load_state_dict({"state": state, "param_groups": groups})  # moves state to each param's device

    def extra_repr(self) -> str:
        return f"devices=({self.devices[0]}, {self.devices[1]}), lrn_exchange={self.lrn_exchange}"


def split_towers(model: nn.Module, devices: tuple[str, str] | str, *, lrn_exchange: bool = True) -> TwoTowerAlexNet:
    """The grouped `model` split over two devices, equal in outputs and gradients (module docstring).

    `model` is left untouched (its weights are copied); keep it on the CPU to save memory.
    Train and evaluate the returned module; write checkpoints from `grouped_state_dict()` or
    `merge_towers(split)`.
    """
    if isinstance(devices, str):
        devices = parse_devices(devices)
    return TwoTowerAlexNet(model, devices, lrn_exchange=lrn_exchange)  # type: ignore[arg-type]


def merge_towers(split: TwoTowerAlexNet) -> nn.Module:
    """A grouped single-device (CPU) model with the split model's current weights."""
    if split.arch is None:
        raise ConfigError("the split model was made from a model not built by create_model; use grouped_state_dict()")
    model = create_model(split.arch, **split.config)
    model.load_state_dict(split.grouped_state_dict(), strict=True)
    return model
