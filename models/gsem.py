"""Gradient Semi-Masking (GSeM) module and the GSeM backbones.

Liu et al., "Gradient Semi-Masking for Improving Adversarial Robustness", Pattern Recognition 172 (2025) 112433;
reference code X-L-Liu/GSeM ``model_class/gsem.py``, ``gsemresnet.py``, ``gsemwideresnet.py``.

The module quantises its input to a 1/alpha grid, adds integer uniform noise in [-beta, beta] (always on, also in
eval mode), smooths it with a 1x1 conv, concatenates it with the input, and applies 3x3 conv -> BN -> Mish.

``gradient_correction=True`` (default) gives the reference's corrected gradient: the identity straight-through
estimator over quantise + noise, so the gradient reaching the input of the module is g_d + g_r (the direct path
through the concat plus conv1's transpose applied to the smoothing path's gradient), exactly what the reference's
pair of tensor hooks computes. ``False`` is plain autograd: ``round`` passes no gradient (the masked gradient).
"""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register
from .resnet import ResNet
from .wideresnet import WideResNet


class _QuantizeNoise(torch.autograd.Function):
    """(round(alpha * x) + noise) / alpha with an identity backward (straight-through)."""

    @staticmethod
    def forward(ctx, x, alpha, noise):
        return (torch.round(alpha * x) + noise) / alpha

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


class GradSemiMaskModule(nn.Module):
    """GSeM(C): state_dict keys ``conv1.*``, ``conv2.weight``, ``bn.*`` as the reference; alpha and beta are plain
    attributes (not saved). Shapes: B x C x H x W in, B x C x H x W out."""

    def __init__(self, in_planes: int, alpha: int = 6, beta: int = 4, gradient_correction: bool = True):
        super().__init__()
        if alpha <= 0 or beta < 0:
            raise ValueError("GSeM needs alpha > 0 and beta >= 0")
        self.alpha, self.beta = alpha, int(beta)
        self.gradient_correction = gradient_correction
        self.conv1 = nn.Conv2d(in_planes, in_planes, kernel_size=1, bias=True)
        self.conv2 = nn.Conv2d(2 * in_planes, in_planes, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(in_planes)

    @property
    def stochastic(self) -> bool:
        """A fresh noise draw at every forward (beta > 0): attacks average over it (EOT)."""
        return self.beta > 0

    def quantize(self, t0: torch.Tensor) -> torch.Tensor:
        """Quantise to the 1/alpha grid plus a fresh integer noise draw in [-beta, beta] per element."""
        noise = torch.randint_like(t0, -self.beta, self.beta + 1) if self.beta > 0 else torch.zeros_like(t0)
        if self.gradient_correction:
            return _QuantizeNoise.apply(t0, self.alpha, noise)
        return (torch.round(self.alpha * t0) + noise) / self.alpha

    def forward(self, t0):
        t_smth = self.conv1(self.quantize(t0))
        return F.mish(self.bn(self.conv2(torch.cat([t0, t_smth], dim=1))))


def set_gradient_correction(model: nn.Module, enabled: bool) -> list:
    """Switch the correction of every GSeM module in ``model``; returns the previous settings (to restore)."""
    mods = [m for m in model.modules() if isinstance(m, GradSemiMaskModule)]
    previous = [m.gradient_correction for m in mods]
    for m in mods:
        m.gradient_correction = enabled
    return previous


@contextlib.contextmanager
def gradient_correction(model: nn.Module, enabled: bool):
    """Context manager: every GSeM module of ``model`` with the correction on/off, restored afterwards."""
    mods = [m for m in model.modules() if isinstance(m, GradSemiMaskModule)]
    previous = set_gradient_correction(model, enabled)
    try:
        yield model
    finally:
        for m, p in zip(mods, previous):
            m.gradient_correction = p


class _GSeMStem:
    """GSeM(64) on the output of the stem (the family's ``stem``); ``_gsem_args`` = (alpha, beta, correction)."""

    def stem_hook(self):
        self.gsem_module = GradSemiMaskModule(64, *self._gsem_args)

    def stem(self, x):
        return self.gsem_module(super().stem(x))


class GSeMResNet(_GSeMStem, ResNet):
    """CIFAR ResNet with GSeM(64) after the stem ReLU (keys: conv1, bn1, gsem_module, layer1..4, linear)."""

    def __init__(self, num_blocks, num_classes=10, alpha=6, beta=4, gradient_correction=True, in_channels=3):
        self._gsem_args = (alpha, beta, gradient_correction)
        super().__init__(num_blocks, num_classes, in_channels)


class GSeMWideResNet(_GSeMStem, WideResNet):
    """WRN with GSeM(64) on the raw (pre-BN) output of the 64-wide stem conv, as the reference."""

    def __init__(self, depth, widen_factor, dropout_rate, num_classes=10, alpha=6, beta=4, gradient_correction=True,
                 in_channels=3):
        self._gsem_args = (alpha, beta, gradient_correction)
        super().__init__(depth, widen_factor, dropout_rate, num_classes, in_channels=in_channels)


@register("GSeMResNet18")
def gsem_resnet18(num_classes, alpha=6, beta=4, gradient_correction=True, in_channels=3):
    return GSeMResNet((2, 2, 2, 2), num_classes, alpha, beta, gradient_correction, in_channels)


@register("GSeMWideResNet28x10")
def gsem_wrn28_10(num_classes, alpha=6, beta=4, gradient_correction=True, in_channels=3):
    return GSeMWideResNet(28, 10, 0.0, num_classes, alpha, beta, gradient_correction, in_channels)
