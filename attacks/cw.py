"""Carlini-Wagner attacks with EOT.

:class:`CWL2` is the GSeM reference's "CW100" (its AdaptiveCW, a torchattacks 3.5 CW with EOT): the L2 attack in
tanh space, cost = sum ||x' - x||^2 + c * sum max(Z_y - max_{j != y} Z_j, -kappa), Adam, early stop every steps/10
steps when the cost went up; returns, per image, the smallest-L2 iterate that was misclassified (judged on that step's
last EOT pass), else the clean image. It has **no norm bound**: its "accuracy" is the fraction of images for which no
misclassifying point was found at any distance. The reference runs 500 steps under the name CW100.

:func:`cw_margin` is the per-example margin loss used for "CW-inf" (PGD on the CW loss, L-inf 8/255), as most
adversarial-training papers mean by CW.
"""
from __future__ import annotations

import torch

from utils.eot import eot_passes

from .base import Attack
from .pgd import pgd_from
from .registry import EOT_ITER, EPS, STEPS_SCALE, Budget, register_attack, scaled


def _cw_f(logits, y, kappa):
    # torchattacks' f: the max over "other" logits is taken over (1 - onehot) * logits (true logit zeroed, not -inf)
    one_hot = torch.eye(logits.shape[1], device=logits.device)[y]
    other = torch.max((1 - one_hot) * logits, dim=1)[0]
    real = torch.max(one_hot * logits, dim=1)[0]
    return torch.clamp(real - other, min=-kappa)


def cw_margin(logits, y):
    """Per-example CW margin loss to ascend: max_{j != y} Z_j - Z_y."""
    logits = logits.float()
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf")).max(1)[0]
    return other - true


class CWL2(Attack):
    """Args: c (weight of the margin term), kappa (confidence), steps, lr (Adam), eot_iter (noisy passes per step,
    cost averaged)."""

    def __init__(self, model, c=1.0, kappa=0.0, steps=500, lr=0.01, eot_iter=1):
        super().__init__(model)
        self.c, self.kappa, self.steps, self.lr, self.eot_iter = c, kappa, int(steps), lr, int(eot_iter)

    def perturb(self, x, y):
        w = torch.atanh(torch.clamp(x * 2 - 1, min=-1, max=1)).detach().requires_grad_(True)
        best_adv = x.clone()
        best_l2 = torch.full((x.shape[0],), 1e10, device=x.device)
        prev_cost = 1e10
        optimizer = torch.optim.Adam([w], lr=self.lr)
        for step in range(self.steps):
            adv = 0.5 * (torch.tanh(w) + 1)
            l2 = (adv - x).pow(2).flatten(1).sum(1)
            cost = 0.0
            for _ in range(self.eot_iter):
                logits = self.model(adv)
                cost = cost + (l2.sum() + self.c * _cw_f(logits, y, self.kappa).sum()) / self.eot_iter
            optimizer.zero_grad()
            cost.backward()
            optimizer.step()
            with torch.no_grad():
                better = (logits.argmax(1) != y) & (best_l2 > l2)
                best_l2 = torch.where(better, l2.detach(), best_l2)
                best_adv = torch.where(better.view(-1, 1, 1, 1), adv.detach(), best_adv)
            if step % max(self.steps // 10, 1) == 0:
                c = cost.item()
                if c > prev_cost:
                    break
                prev_cost = c
        return best_adv


@register_attack("CW100", EOT_ITER, STEPS_SCALE)
def cw100(model, cfg):
    """The GSeM reference's "CW100": unbounded L2 Carlini-Wagner, 500 steps (sic), c 1, kappa 0, Adam lr 0.01, EOT."""
    return CWL2(model, c=1.0, kappa=0.0, steps=scaled(500, cfg.steps_scale), lr=0.01,
                eot_iter=eot_passes(model, cfg.eot_iter))


@register_attack("CWinf", EPS, EOT_ITER, STEPS_SCALE, budget=Budget("eps", "linf"))
def cw_inf(model, cfg):
    """100-step L-inf PGD on the CW margin loss, step 2/255 (what most adversarial-training papers call CW)."""
    return pgd_from(model, cfg, scaled(100, cfg.steps_scale), 2 / 255, loss_fn=cw_margin)
