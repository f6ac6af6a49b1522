"""torchvision's AlexNet weights (`alexnet-owt-*.pth`) into our `alexnet-owt`, without torchvision.

The file is a plain state_dict saved with torch.save; our `alexnet-owt` keeps torchvision's
module indices, so it loads with strict=True. The preprocessing these weights were trained with
is `preprocess.TORCHVISION`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import torch_load_safely
from ..errors import CheckpointError
from ..models import empty_model


def read_torch_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A state_dict from a torch.save file, loaded with weights_only=True (no pickled code runs).

    Accepts a bare state_dict or one wrapped as {"state_dict": ...} / {"model": ...}, and
    strips a DataParallel "module." prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    obj = torch_load_safely(path, "torch weights")
    if isinstance(obj, dict) and obj.get("format") == "alexnet-checkpoint":
        raise CheckpointError(f"{path} is already an alexnet checkpoint; use it directly")
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def owt_from_state_dict(sd: dict[str, Tensor]) -> nn.Module:
    """Build `alexnet-owt` sized for `sd` (classes, input channels) and load it strictly."""
    try:
        num_classes = int(sd["classifier.6.weight"].shape[0])
        in_chans = int(sd["features.0.weight"].shape[1])
    except KeyError:
        raise CheckpointError(
            "not a torchvision AlexNet state_dict (no features.0.weight / classifier.6.weight); "
            f"keys start {', '.join(list(sd)[:4])}"
        ) from None
    model = empty_model("alexnet-owt", num_classes=num_classes, in_chans=in_chans)
    missing = sorted(set(model.state_dict()) - set(sd))
    unexpected = sorted(set(sd) - set(model.state_dict()))
    if missing or unexpected:
        raise CheckpointError(f"not a torchvision AlexNet state_dict: missing {missing[:4]}, unexpected {unexpected[:4]}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"torchvision weights do not fit alexnet-owt: {str(exc).splitlines()[-1].strip()}") from None
    return model
