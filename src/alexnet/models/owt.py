"""torchvision's AlexNet: the "one weird trick" layout (Krizhevsky 2014), not the 2012 paper's.

64-192-384-256-256 conv, no groups, no LRN, conv1 padded by 2 so 224 -> 55, an adaptive
average pool to 6x6, dropout *before* fc6 and fc7. The module indices are torchvision's, so
its state_dict (`features.0.weight`, ..., `classifier.6.bias`) loads with strict=True.
61,100,840 parameters at 1000 classes.

The options (activation, LRN, pooling, dropout) keep the indices: an activation slot may
carry an LRN after the nonlinearity, which has no parameters, so the keys never move.
"""

from __future__ import annotations

from torch import Tensor, nn

from .init import init_weights
from .layers import IMAGE_LAYER_WEIGHT_GRAD_CHUNK, Conv2d, Dropout, ImageClassifier, Linear, make_activation, make_pool
from .lrn import LocalResponseNorm
from .registry import register_model
from .spec import IMAGENET_MEAN, IMAGENET_STD, InputConfig, declare_layers


class ActNorm(nn.Sequential):
    """An activation, optionally followed by LRN, occupying one torchvision index."""

    def __init__(self, activation: str, lrn: LocalResponseNorm | None) -> None:
        super().__init__(make_activation(activation), *([lrn] if lrn is not None else []))


# paper layer name -> the module whose output is its activation (torchvision's indices)
PAPER_LAYERS = (
    ("conv1", "features.1.0"), ("conv2", "features.4.0"), ("conv3", "features.7"), ("conv4", "features.9"),
    ("conv5", "features.11"), ("pool5", "features.12"), ("fc6", "classifier.2"), ("fc7", "classifier.5"),
    ("fc8", "classifier.6"),
)  # fmt: skip
# torchvision's AlexNet_Weights.IMAGENET1K_V1 transform: short side 256, centre 224, 0-1, ImageNet mean/std,
# image files read as torchvision reads them (Preprocess.geometry)
TORCHVISION_INPUT = InputConfig(input_size=224, in_chans=3, resize=256, scale=1 / 255, mean=IMAGENET_MEAN,
                                std=IMAGENET_STD, geometry="torchvision")  # fmt: skip


class AlexNetOWT(ImageClassifier):
    """torchvision's module layout and indices; its named layers are PAPER_LAYERS."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int,
        activation: str,
        lrn: bool,
        lrn_convention: str,
        pooling: str,
        dropout: float,
        init: str,
    ) -> None:
        super().__init__()

        def norm() -> LocalResponseNorm | None:
            return LocalResponseNorm(5, 1e-4, 0.75, 2.0, convention=lrn_convention) if lrn else None

        self.features = nn.Sequential(
            Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2, weight_grad_chunk=IMAGE_LAYER_WEIGHT_GRAD_CHUNK),  # 0: (N, 64, 55, 55)
            ActNorm(activation, norm()),  # 1
            make_pool(pooling),  # 2: 27x27
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3: (N, 192, 27, 27)
            ActNorm(activation, norm()),  # 4
            make_pool(pooling),  # 5: 13x13
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
            make_activation(activation),  # 7
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
            make_activation(activation),  # 9
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
            make_activation(activation),  # 11
            make_pool(pooling),  # 12: (N, 256, 6, 6)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            Dropout(p=dropout),  # 0
            Linear(256 * 6 * 6, 4096),  # 1: fc6
            make_activation(activation),  # 2
            Dropout(p=dropout),  # 3
            Linear(4096, 4096),  # 4: fc7
            make_activation(activation),  # 5
            Linear(4096, num_classes),  # 6: fc8
        )
        self.num_classes = num_classes
        self.feature_layers = declare_layers(self, PAPER_LAYERS)
        init_weights(self, init, bias_one=())

    def forward_features(self, x: Tensor) -> Tensor:
        return self.avgpool(self.features(x))



@register_model("alexnet-owt", "torchvision's AlexNet (one weird trick layout, torchvision keys); 61,100,840 params",
                data=TORCHVISION_INPUT)
def alexnet_owt(
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    activation: str = "relu",
    lrn: bool = False,
    lrn_convention: str = "paper",
    pooling: str = "overlap",
    dropout: float = 0.5,
    init: str = "pytorch",
) -> AlexNetOWT:
    return AlexNetOWT(
        num_classes=num_classes, in_chans=in_chans, activation=activation, lrn=lrn,
        lrn_convention=lrn_convention, pooling=pooling, dropout=dropout, init=init,
    )  # fmt: skip
