"""A small CNN for quick experiments on 32 x 32 images (three 3 x 3 convolutions, 16/32/32 channels, BatchNorm on the
first two, two max-pools, a 4 x 4 average pool and one linear layer: 19,562 parameters for 10 classes). It trains on
the built-in ``digits`` in seconds per epoch on a CPU, where VGG-11 takes minutes with FGR's double backward; the
deformation demonstration (``benchmarks/deformation_demo.py``) uses it.

``GSeMSmallCNN`` is the same network with a GSeM(16) module after the first conv-BN-ReLU, where GSeM-ResNet-18 has
its module after the stem (``models/gsem.py``): small enough to train the GSeM demonstration's whole matrix on a CPU
(``benchmarks/gsem_demo.py``)."""
from torch import nn

from .gsem import GradSemiMaskModule
from .registry import register


def _stem(in_channels):
    return [nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()]


def _head(num_classes):
    return [nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(32 * 16, num_classes)]


@register("smallcnn")
def smallcnn(num_classes, in_channels=3):
    return nn.Sequential(*_stem(in_channels), *_head(num_classes))


@register("GSeMSmallCNN")
def gsem_smallcnn(num_classes, alpha=6, beta=4, gradient_correction=True, in_channels=3):
    return nn.Sequential(*_stem(in_channels), GradSemiMaskModule(16, alpha, beta, gradient_correction),
                         *_head(num_classes))
