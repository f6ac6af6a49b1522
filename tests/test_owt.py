"""alexnet-owt must be torchvision's AlexNet, key for key and output for output."""

import torch
from torch import nn

from alexnet.models import create_model


class TorchvisionAlexNet(nn.Module):
    """torchvision.models.AlexNet written out here (torchvision does not import on this machine)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def test_torchvision_state_dict_loads_strict_and_matches():
    ref = TorchvisionAlexNet().eval()
    ours = create_model("alexnet-owt").eval()
    sd = ref.state_dict()
    assert list(sd) == list(ours.state_dict())
    assert all(sd[k].shape == v.shape for k, v in ours.state_dict().items())
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        # equal up to float32 rounding: our fc layers multiply in oneDNN, the reference's in MKL
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-7)


def test_options_keep_torchvision_keys():
    keys = list(create_model("alexnet-owt").state_dict())
    assert list(create_model("alexnet-owt", lrn=True, activation="tanh").state_dict()) == keys
