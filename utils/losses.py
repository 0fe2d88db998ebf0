"""Adversarial-training criteria for the shared loop (``utils.engine``): GSeM's mixed 50/50 cross-entropy and MART,
each with EOT over the GSeM noise for the weight gradient (spec gsem.md §3.3). Every criterion takes the training
attack (``attack(x, y) -> x_adv``) and ``gra_eot`` (noisy forward/backward passes per step) and does its own
backward (the gradient is accumulated over the passes); MART optionally takes an AWP object (``utils.awp``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .eot import eot_backward


def mart_loss(logits_adv: torch.Tensor, logits_nat: torch.Tensor, y: torch.Tensor, beta: float = 5.0):
    """MART (Wang et al., ICLR 2020), as YisenWang/MART ``mart_loss`` (GSeM uses beta = 5, MART's default is 6):
    boosted CE on the adversarial logits plus beta times the KL(p_nat || p_adv) weighted by 1 - p_nat[y]."""
    b = y.shape[0]
    p_adv = F.softmax(logits_adv, dim=1)
    top2 = torch.argsort(p_adv, dim=1)[:, -2:]
    y_other = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), y_other)
    p_nat = F.softmax(logits_nat, dim=1)
    true_probs = p_nat.gather(1, y.unsqueeze(1)).squeeze(1)
    kl = F.kl_div(torch.log(p_adv + 1e-12), p_nat, reduction="none").sum(1)  # p_nat * (log p_nat - log p_adv)
    loss_robust = (1.0 / b) * (kl * (1.0000001 - true_probs)).sum()
    return loss_adv + beta * loss_robust


class OnAdversarial:
    """Adversarial training around any criterion: the whole batch is replaced by ``attack(x, y)`` and
    ``criterion(model, x_adv, y)`` is returned (e.g. FGR's ``CE + lambda * R`` at the adversarially deformed input)."""

    def __init__(self, criterion, attack):
        self.criterion, self.attack = criterion, attack

    def __call__(self, model, x, y):
        return self.criterion(model, self.attack(x, y), y)


class MixedAdversarialCE:
    """train_gsem.py: the even-indexed half of the batch is replaced by adversarial examples, then plain CE over the
    mixed batch, averaged over ``gra_eot`` noisy passes."""

    def __init__(self, attack, gra_eot: int = 10):
        self.attack, self.gra_eot = attack, gra_eot

    def __call__(self, model, x, y):
        x = x.clone()
        x[0::2] = self.attack(x[0::2], y[0::2])

        def one_pass():
            logits = model(x)
            return F.cross_entropy(logits, y), logits

        loss, logits = eot_backward(one_pass, self.gra_eot, model)
        return loss, logits, {}


class MARTCriterion:
    """train_gsem_mart.py / train_gsem_awp.py: the whole batch adversarial, MART loss (adversarial forward first,
    then clean), averaged over ``gra_eot`` noisy passes; training accuracy on the adversarial logits. With ``awp``,
    the weights are perturbed (AWP computed on the adversarial batch) before the passes and restored after the step."""

    def __init__(self, attack, beta: float = 5.0, gra_eot: int = 10, awp=None):
        self.attack, self.beta, self.gra_eot, self.awp = attack, beta, gra_eot, awp
        self._awp_state = None

    def __call__(self, model, x, y):
        x_adv = self.attack(x, y)
        if self.awp is not None:
            self._awp_state = self.awp.perturb(self.awp.calc(x_adv, y))

        def one_pass():
            logits_adv = model(x_adv)
            logits_nat = model(x)
            return mart_loss(logits_adv, logits_nat, y, self.beta), logits_adv

        loss, logits = eot_backward(one_pass, self.gra_eot, model)
        return loss, logits, {}

    def after_step(self, model):
        if self._awp_state is not None:
            self.awp.restore(self._awp_state)
            self._awp_state = None
