"""Wide ResNet-28-10 as in the GSeM repository's baseline (meliketoy/wide-resnet.pytorch style).
Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.

Differences from the textbook WRN that the reference has (kept so its checkpoints load): a 64-wide stem
(stages 64/160/320/640 instead of 16/160/320/640), biases on every conv, 1x1 conv shortcuts without BN, stride on
the second conv of a block, final BN with momentum 0.9. state_dict keys equal the reference ``WideResNet28x10``.
"""
import torch.nn.functional as F
from torch import nn

from .registry import register


class WideBasic(nn.Module):
    def __init__(self, in_planes, planes, dropout_rate, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout_rate)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=True))

    def forward(self, x):
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-depth-k. ``stem_hook`` lets subclasses add a module applied to the raw stem conv output."""

    def __init__(self, depth=28, widen_factor=10, dropout_rate=0.0, num_classes=10, stem_width=64, in_channels=3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [stem_width, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=True)
        self.stem_hook()
        self.layer1 = self._make_layer(widths[1], n, dropout_rate, 1)
        self.layer2 = self._make_layer(widths[2], n, dropout_rate, 2)
        self.layer3 = self._make_layer(widths[3], n, dropout_rate, 2)
        self.bn1 = nn.BatchNorm2d(widths[3], momentum=0.9)
        self.linear = nn.Linear(widths[3], num_classes)

    def stem_hook(self):
        """Subclasses add modules here so their state_dict keys sit between the stem and layer1."""

    def stem(self, x):
        return self.conv1(x)

    def _make_layer(self, planes, n, dropout_rate, stride):
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(WideBasic(self.in_planes, planes, dropout_rate, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(self.stem(x))))
        out = F.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register("wrn28_10", "WideResNet28x10")
def wrn28_10(num_classes, in_channels=3):
    return WideResNet(28, 10, 0.0, num_classes, in_channels=in_channels)
