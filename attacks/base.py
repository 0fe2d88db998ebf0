"""Base class for attacks: ``attack(x, y) -> x_adv``, with the model in eval mode during the attack and its
train/eval mode restored afterwards (as torchattacks and AutoAttack do)."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Put ``model`` (and every submodule) in eval mode, then restore each module's own mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


class Attack:
    """Subclasses implement ``perturb(x, y) -> x_adv`` with every hyperparameter set in ``__init__``."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.model):
            return self.perturb(x.detach(), y.detach())
