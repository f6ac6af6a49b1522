"""Models: the paper's AlexNet and its variants, behind one registry."""

from . import alexnet as _alexnet  # noqa: F401  (registers alexnet, alexnet-1gpu, caffenet, alexnet-small)
from . import cuda_convnet as _cuda_convnet  # noqa: F401  (registers cifar-18pct, conv-local)
from . import owt as _owt  # noqa: F401  (registers alexnet-owt)
from .activations import activations, conv1_weight, layer_names, paper_layers, towers
from .lrn import LocalResponseNorm, local_response_norm
from .registry import create_model, empty_model, input_config, list_models, model_entry
from .spec import FeatureInfo, FeatureLayer, InputConfig, feature_info

__all__ = [
    "FeatureInfo",
    "FeatureLayer",
    "InputConfig",
    "LocalResponseNorm",
    "activations",
    "conv1_weight",
    "create_model",
    "empty_model",
    "feature_info",
    "input_config",
    "layer_names",
    "list_models",
    "local_response_norm",
    "model_entry",
    "paper_layers",
    "towers",
]
