"""Base class for attacks: ``attack(x, y) -> x_adv`` in [0, 1], with the model in eval mode during the attack and
each module's train/eval mode restored afterwards (as torchattacks and AutoAttack do)."""
from __future__ import annotations

import contextlib

import torch

from models import gradient_correction
from utils.modes import eval_mode


class Attack:
    """Subclasses implement ``perturb(x, y) -> x_adv`` with every hyperparameter set in ``__init__``.

    ``produces_flow``: True for deformation attacks, which keep the flow of their last call in ``last_flow``
    (B x H x W x 2, normalised align_corners=True units), so that evaluation can report its magnitude.
    ``train_mode``: False (every registered attack) runs the model in eval mode; True leaves the model's mode as the
    caller set it (a training attack run as PGD-AT's official code runs it: BatchNorm on batch statistics, its
    forwards updating the running statistics).
    """

    produces_flow = False
    train_mode = False

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mode = contextlib.nullcontext() if self.train_mode else eval_mode(self.model)
        with mode, torch.enable_grad():  # gradients even when called under torch.no_grad()
            return self.perturb(x.detach(), y.detach())

    def settings(self) -> dict:
        """The hyperparameters this object runs with (its scalar attributes), for the result record."""
        return {k: v for k, v in vars(self).items() if not k.startswith(("_", "last_"))
                and (v is None or isinstance(v, (bool, int, float, str)))}


class Uncorrected(Attack):
    """Run ``attack`` with every GSeM module's gradient correction off (the masked gradient): the paper's ablation,
    and an evaluation of how much the correction matters."""

    def __init__(self, model, attack):
        super().__init__(model)
        self.attack = attack
        self.train_mode = attack.train_mode  # PGD-AT's train-mode attack stays in train mode without the correction

    def perturb(self, x, y):
        with gradient_correction(self.model, False):
            return self.attack(x, y)

    def settings(self) -> dict:
        return {**self.attack.settings(), "corrected": False}
