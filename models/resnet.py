"""CIFAR ResNet-18 (kuangliu/pytorch-cifar style): 3x3 stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2].
He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. state_dict keys equal the GSeM repository's
baseline ``ResNet18`` (``conv1``, ``bn1``, ``layerN.M.*``, ``layerN.0.shortcut.{0,1}``, ``linear``).
"""
import torch.nn.functional as F
from torch import nn

from .registry import register


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet. Subclasses (GSeM) add modules in ``stem_hook`` and override ``stem``."""

    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes=10, in_channels=3):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.stem_hook()
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.linear = nn.Linear(512, num_classes)

    def stem_hook(self):
        """Subclasses add modules here so their state_dict keys sit between the stem and layer1."""

    def stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def _make_layer(self, planes, n, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.stem(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register("resnet18")  # lookup is case-insensitive: ResNet18 works too
def resnet18(num_classes, in_channels=3):
    return ResNet((2, 2, 2, 2), num_classes, in_channels)
