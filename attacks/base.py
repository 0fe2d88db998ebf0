"""Base class for attacks: ``attack(x, y) -> x_adv`` in [0, 1], with the model in eval mode during the attack and
each module's train/eval mode restored afterwards (as torchattacks and AutoAttack do)."""
from __future__ import annotations

import torch

from utils.runtime import eval_mode


class Attack:
    """Subclasses implement ``perturb(x, y) -> x_adv`` with every hyperparameter set in ``__init__``.

    ``produces_flow``: True for deformation attacks, which keep the flow of their last call in ``last_flow``
    (B x H x W x 2, normalised align_corners=True units), so that evaluation can report its magnitude.
    """

    produces_flow = False

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.model), torch.enable_grad():  # gradients even when called under torch.no_grad()
            return self.perturb(x.detach(), y.detach())
