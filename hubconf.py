"""torch.hub entry points: `torch.hub.load("<path to this checkout>", "alexnet", source="local", weights=PATH)`.

One entry point per registered model (`torch.hub.list` shows them; hyphens become
underscores: `alexnet_1gpu`, `alexnet_owt`, ...). Without `weights` it builds the model with
the given options (`num_classes=10`, `lrn_convention="per-term"`, ...). With `weights` it
loads an alexnet checkpoint (`alexnet import-weights`, training runs) or a safetensors export
(`alexnet export --format safetensors`), checks it holds this architecture, and returns the
model in eval mode with `class_names` and `preprocess` attached.
"""

from __future__ import annotations

import os
import sys
from typing import Any

dependencies = ["torch"]

try:
    import alexnet as _alexnet  # installed, or run from a checkout with src/ on the path
except ImportError:  # a plain checkout: the package lives under src/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
    import alexnet as _alexnet


def _load(arch: str, weights: str | os.PathLike[str] | None, options: dict[str, Any]) -> Any:
    from alexnet.errors import ConfigError

    if weights is None:
        return _alexnet.create_model(arch, **options)
    if options:
        raise ConfigError(f"weights= fixes the model's options; drop {', '.join(sorted(options))}")
    if str(weights).endswith(".safetensors"):
        from alexnet.interop.export import load_safetensors

        model, info = load_safetensors(weights)
    else:
        from alexnet.checkpoint import load_checkpoint, model_from_checkpoint

        info = load_checkpoint(weights)
        model = model_from_checkpoint(info)
    if model.arch != arch:
        raise ConfigError(f"{weights} holds {model.arch!r}, not {arch!r}: load it with that entry point")
    model.class_names = info.get("class_names")
    model.preprocess = info.get("preprocess")
    return model.eval()


def _entry(arch: str) -> Any:
    def load(weights: str | os.PathLike[str] | None = None, **options: Any) -> Any:
        return _load(arch, weights, options)

    load.__name__ = arch.replace("-", "_")
    load.__doc__ = f"{_alexnet.models.model_entry(arch).description}. weights=PATH: a checkpoint or safetensors export."
    return load


for _arch in _alexnet.list_models():
    globals()[_arch.replace("-", "_")] = _entry(_arch)
