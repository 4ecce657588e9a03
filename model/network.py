"""The AlexNet architectures we serve.

``AlexNet`` is the single-tower network of Krizhevsky et al. (2012). Its module indices
follow the layout tutorials save (``features.N`` / ``classifier.N``) so their plain state
dicts load unchanged. ``torchvision_alexnet`` is torchvision's variant, for its ImageNet
weights.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import AlexNet as TorchvisionAlexNet

from model.lrn import LocalResponseNorm

CLASSIC = "alexnet"
CLASSIC_NO_RELU1 = "alexnet-no-relu1"
TORCHVISION = "torchvision-alexnet"
ARCHITECTURES = (CLASSIC, CLASSIC_NO_RELU1, TORCHVISION)


def _lrn() -> LocalResponseNorm:
    return LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)


class AlexNet(nn.Module):
    """Classic AlexNet for 3×227×227 input.

    ``relu_after_conv1=False`` reproduces a widely copied tutorial network that forgot
    that ReLU, so checkpoints trained with it still compute what they were trained to.
    """

    def __init__(self, num_classes: int, dropout: float = 0.5, relu_after_conv1: bool = True) -> None:
        super().__init__()
        first: list[nn.Module] = [nn.Conv2d(3, 96, kernel_size=11, stride=4, padding=2)]
        if relu_after_conv1:
            first.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(
            *first,
            _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            _lrn(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        # He init keeps activations alive through the unnormalised stack; with PyTorch's
        # default init the network sits at chance for several epochs.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.features(x)
        return self.classifier(x.flatten(1))


def build(arch: str, num_classes: int) -> nn.Module:
    """Build an untrained network of a named architecture."""
    if arch == CLASSIC:
        return AlexNet(num_classes)
    if arch == CLASSIC_NO_RELU1:
        return AlexNet(num_classes, relu_after_conv1=False)
    if arch == TORCHVISION:
        return TorchvisionAlexNet(num_classes=num_classes)
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
