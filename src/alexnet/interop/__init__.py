"""Interoperability: published weights in (torchvision, Caffe's bvlc_alexnet), exports out.

    import_weights("torchvision" | "bvlc_alexnet" | PATH | URL, out)   -> alexnet checkpoint
    export_checkpoint(ckpt, "onnx" | "safetensors" | "torchscript" | "caffe-npy", out)
    load_safetensors(path) -> (model, metadata)
    imagenet_class_names(), imagenet_wnids()

The submodules import torch-heavy pieces lazily where they can; nothing runs at import.
"""

from .classes import class_names_for, imagenet_class_names, imagenet_synsets, imagenet_wnids
from .export import ExportResult, export_checkpoint, export_onnx, export_safetensors, export_torchscript, load_safetensors
from .importer import ImportResult, import_weights

__all__ = [
    "ExportResult",
    "ImportResult",
    "class_names_for",
    "export_checkpoint",
    "export_onnx",
    "export_safetensors",
    "export_torchscript",
    "imagenet_class_names",
    "imagenet_synsets",
    "imagenet_wnids",
    "import_weights",
    "load_safetensors",
]
