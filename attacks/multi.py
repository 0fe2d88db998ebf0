"""Run attacks in sequence, each only on the points still robust (torchattacks MultiAttack, as the GSeM reference's
AutoAttack): success is judged by one (noisy) forward after each stage."""
from __future__ import annotations

import torch

from .base import Attack


class MultiAttack(Attack):
    """Args: model, attacks (list of ``(name, attack)``). ``fooled_by`` counts, over all calls, the points each
    stage fooled first (e.g. to see whether gradient-free Square finds points the gradient stages missed)."""

    def __init__(self, model, attacks):
        super().__init__(model)
        self.attacks = list(attacks)
        self.fooled_by = {name: 0 for name, _ in self.attacks}

    def perturb(self, x, y):
        final = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)
        for name, attack in self.attacks:
            adv = attack(x[todo], y[todo])
            with torch.no_grad():
                wrong = self.model(adv).argmax(1) != y[todo]
            final[todo[wrong]] = adv[wrong]
            self.fooled_by[name] += int(wrong.sum())
            todo = todo[~wrong]
            if todo.numel() == 0:
                break
        return final

    def settings(self) -> dict:
        return {f"{name}.{k}": v for name, attack in self.attacks for k, v in attack.settings().items()}
