"""VGG-11/13/16/19 with BatchNorm for 32x32 inputs, as in the FGR reference (xpf/Flow-Gradient-Regularization,
``models/vgg.py``): Conv3x3(bias) -> BN -> ReLU blocks, MaxPool at each 'M', a no-op AvgPool2d(1, 1), and a single
Linear(512, num_classes). Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015. state_dict keys and shapes equal the reference's (``features.*``, ``classifier.*``).
"""
from torch import nn

from .registry import register

CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, cfg, num_classes=10, in_channels=3):
        super().__init__()
        layers, in_ch = [], in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_ch = v
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))  # no-op kept so layer indices match the reference
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.features(x)
        return self.classifier(out.flatten(1))


def _factory(name):
    def build(num_classes, in_channels=3):
        return VGG(CFG[name], num_classes, in_channels)

    build.__name__ = name
    return build


for _name in CFG:
    register(_name)(_factory(_name))
