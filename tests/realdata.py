"""Real images for attack tests: scikit-learn's handwritten digits through the built-in ``digits`` dataset (32 x 32
RGB), and a small undefended CNN trained on them in seconds."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision import transforms

from models import build_model
from utils.datasets import Digits


def digits_tensors(train: bool):
    ds = Digits(train=train, transform=transforms.ToTensor())
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.tensor(ds.targets)


def small_cnn():
    return build_model("smallcnn", 10)


def train_digits_classifier(epochs: int = 6, seed: int = 0, loss_fn=None, model=None):
    """``model`` (default: the small CNN) trained with Adam on the 1,497 training digits; ``loss_fn(model, x, y) ->
    loss`` (default CE). Returns the model in eval mode."""
    torch.manual_seed(seed)
    x, y = digits_tensors(True)
    model = model if model is not None else small_cnn()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            loss = loss_fn(model, x[idx], y[idx]) if loss_fn else F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return model.eval()
