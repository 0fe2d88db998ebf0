"""L-infinity PGD with random start and EOT (Madry et al., ICLR 2018), as the GSeM reference's AdaptivePGD:
each step takes the sign of the EOT-averaged input gradient (the GSeM modules give the corrected gradient unless
their correction is switched off), then projects onto the eps-ball and [0, 1]; the last iterate is returned.
Training: eps 8/255, step 2/255, 10 steps, EOT 10; evaluation (PGD500): 500 steps, EOT 20.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.runtime import autocast
from utils.eot import eot_input_grad

from .base import Attack


def ce_per_example(logits, y):
    return F.cross_entropy(logits.float(), y, reduction="none")


class PGD(Attack):
    """Args: eps and alpha (step) in [0, 1] pixel units (8/255 means 8 grey levels), steps, random_start (uniform in
    the eps-ball), eot_iter (noise samples per step), batched_eot (copies of the batch in one forward, at most
    eot_batch images each; default per device, ``utils.eot``), amp (bf16 autocast where the device has native
    bf16), loss_fn(logits, y) -> per-example loss to ascend (default cross-entropy)."""

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True, eot_iter=1,
                 batched_eot=True, amp=False, loss_fn=ce_per_example, eot_batch=None):
        super().__init__(model)
        if eps < 0 or alpha < 0 or steps < 0 or eot_iter < 1:
            raise ValueError("PGD needs eps >= 0, alpha >= 0, steps >= 0, eot_iter >= 1")
        self.eps, self.alpha, self.steps = eps, alpha, int(steps)
        self.random_start, self.eot_iter, self.batched_eot = random_start, int(eot_iter), batched_eot
        self.amp, self.loss_fn, self.eot_batch = amp, loss_fn, eot_batch

    def perturb(self, x, y):
        x_adv = x.clone()
        if self.random_start:
            x_adv = (x_adv + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp_(0, 1)
        for _ in range(self.steps):
            with autocast(x.device, self.amp):
                g, _ = eot_input_grad(self.model, x_adv, y, self.loss_fn, self.eot_iter, self.batched_eot,
                                      self.eot_batch)
            x_adv = x_adv + self.alpha * g.sign()
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp_(0, 1)
        return x_adv.detach()
