"""alexnet: the AlexNet system of Krizhevsky, Sutskever and Hinton (2012) on PyTorch."""

from .errors import AlexNetError, CheckpointError, ConfigError, DataError
from .models import activations, create_model, layer_names, list_models

__version__ = "0.1.0"

__all__ = [
    "AlexNetError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "__version__",
    "activations",
    "create_model",
    "layer_names",
    "list_models",
]
