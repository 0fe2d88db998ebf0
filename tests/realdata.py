"""Real images for attack tests: scikit-learn's handwritten digits through the built-in ``digits`` dataset (32 x 32
RGB), and a small undefended CNN trained on them in seconds."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision import transforms

from utils.datasets import Digits


def digits_tensors(train: bool):
    ds = Digits(train=train, transform=transforms.ToTensor())
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor(ds.targets)


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(32 * 16, 10))


def train_digits_classifier(epochs: int = 6, seed: int = 0, loss_fn=None):
    """A small CNN trained with Adam on the 1,497 training digits; ``loss_fn(model, x, y) -> loss`` (default CE).
    Returns the model in eval mode."""
    torch.manual_seed(seed)
    x, y = digits_tensors(True)
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            loss = loss_fn(model, x[idx], y[idx]) if loss_fn else F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return model.eval()
