"""TRADES' inner maximisation (Zhang et al., ICML 2019; yaodongyu/TRADES ``trades.py``): L-inf PGD on
KL(f(x) || f(x')) in eval mode, started at x + 0.001 N(0, 1) (not clamped: the first gradient is taken there, as the
official code), sign steps, ``min(max(x', x - eps), x + eps)`` then [0, 1] as the official code; EOT over the GSeM
noise through the EOT helper (the clean prediction from one pass). The training attack of ``--loss trades``, built
from the registry as ``TRADES-KL`` (it ignores the labels, so it may turn a misclassified point correct: declared
``uses_labels=False``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.eot import eot_input_grad

from .base import Attack
from .pgd import PGD_ALPHA, PGD_STEPS
from .registry import EOT_ITER, EPS, Budget, register_attack


def kl_to(logits, p_clean):
    """Per-example KL(p_clean || softmax(logits)), the TRADES attack's objective (ascended)."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), p_clean, reduction="none").sum(1)


class TradesPGD(Attack):
    """Args: eps, alpha (step) in [0, 1] pixel units, steps, eot_iter, batched_eot, eot_batch (as :class:`PGD`)."""

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps=10, eot_iter=1, batched_eot=True, eot_batch=None):
        super().__init__(model)
        self.eps, self.alpha, self.steps, self.eot_iter = eps, alpha, int(steps), int(eot_iter)
        self.batched_eot, self.eot_batch = batched_eot, eot_batch

    def perturb(self, x, y):
        with torch.no_grad():
            p_clean = F.softmax(self.model(x).float(), dim=1)
        x_adv = x + 0.001 * torch.randn_like(x)
        for _ in range(self.steps):
            g, _ = eot_input_grad(self.model, x_adv, p_clean, kl_to, self.eot_iter, self.batched_eot, self.eot_batch)
            x_adv = x_adv + self.alpha * g.sign()
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp_(0, 1)
        return x_adv.detach()


@register_attack("TRADES-KL", EPS, EOT_ITER, PGD_STEPS, PGD_ALPHA, budget=Budget("eps", "linf"), gradient="white",
                 uses_labels=False)
def trades_kl(model, cfg):
    """TRADES' training attack: L-inf PGD on the KL divergence to the clean prediction (default 10 steps of 2/255)."""
    return TradesPGD(model, eps=cfg.eps, alpha=cfg.pgd_alpha, steps=cfg.pgd_steps, eot_iter=cfg.eot_iter,
                     batched_eot=cfg.batched_eot, eot_batch=cfg.eot_batch)
