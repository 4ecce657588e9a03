import torch
from torch import nn

from model import network
from model.lrn import LocalResponseNorm


def test_shapes_and_parameter_count() -> None:
    net = network.AlexNet(2).eval()
    assert sum(p.numel() for p in net.parameters()) == 58_289_538  # ~58.3 M with 2 classes
    assert net(torch.zeros(2, 3, 227, 227)).shape == (2, 2)
    assert network.AlexNet(1000)(torch.zeros(1, 3, 227, 227)).shape == (1, 1000)


def test_layers_follow_the_paper() -> None:
    features = network.AlexNet(2).features
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (96, (11, 11), (4, 4), (2, 2)),
        (256, (5, 5), (1, 1), (2, 2)),
        (384, (3, 3), (1, 1), (1, 1)),
        (384, (3, 3), (1, 1), (1, 1)),
        (256, (3, 3), (1, 1), (1, 1)),
    ]
    assert isinstance(features[1], nn.ReLU), "the ReLU after the first convolution"
    lrns = [m for m in features if isinstance(m, LocalResponseNorm)]
    assert [(m.size, m.alpha, m.beta, m.k) for m in lrns] == [(5, 1e-4, 0.75, 2.0)] * 2
    pools = [m for m in features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(3, 2)] * 3


def test_tutorial_variant_without_first_relu() -> None:
    features = network.build(network.CLASSIC_NO_RELU1, 2).features
    assert isinstance(features[1], LocalResponseNorm)


def test_torchvision_variant() -> None:
    net = network.build(network.TORCHVISION, 1000).eval()
    assert net(torch.zeros(1, 3, 227, 227)).shape == (1, 1000)
