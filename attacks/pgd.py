"""L-infinity PGD with random start and EOT (Madry et al., ICLR 2018), as the GSeM reference's AdaptivePGD:
each step takes the sign of the EOT-averaged input gradient (the GSeM modules give the corrected gradient unless
their correction is switched off), then projects onto the eps-ball and [0, 1] as torchattacks and the GSeM authors
do (``x + clamp(x_adv - x, -eps, eps)``, then [0, 1]); the last iterate is returned.
Training: eps 8/255, step 2/255, 10 steps, EOT 10; evaluation (PGD500): 500 steps, EOT 20.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.argtypes import positive_int, step_255
from utils.eot import eot_input_grad

from .base import Attack, Uncorrected
from .registry import EOT_ITER, EPS, STEPS_SCALE, Budget, Knob, register_attack, scaled


def ce_per_example(logits, y):
    return F.cross_entropy(logits.float(), y, reduction="none")


class PGD(Attack):
    """Args: eps and alpha (step) in [0, 1] pixel units (8/255 means 8 grey levels), steps, random_start (uniform in
    the eps-ball), eot_iter (noise samples per step), batched_eot (copies of the batch in one forward, at most
    eot_batch images each; default per device, ``utils.eot``), loss_fn(logits, y) -> per-example loss to ascend
    (default cross-entropy), train_mode (the model's mode left as the caller set it, as PGD-AT's official code
    (locuslab/robust_overfitting ``attack_pgd``) attacks in train mode: BatchNorm on batch statistics, EOT passes
    sequential, the iterate and projection in the official order (:meth:`_perturb_delta`), and after the steps one more
    forward of the result, the official restart-selection forward, so the running statistics see the same updates).
    Precision is the caller's: run it under ``utils.precision.autocast`` for bf16."""

    def __init__(self, model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True, eot_iter=1,
                 batched_eot=True, loss_fn=ce_per_example, eot_batch=None, train_mode=False):
        super().__init__(model)
        if eps < 0 or alpha < 0 or steps < 0 or eot_iter < 1:
            raise ValueError("PGD needs eps >= 0, alpha >= 0, steps >= 0, eot_iter >= 1")
        self.eps, self.alpha, self.steps = eps, alpha, int(steps)
        self.random_start, self.eot_iter, self.batched_eot = random_start, int(eot_iter), batched_eot and not train_mode
        self.loss_fn, self.eot_batch, self.train_mode = loss_fn, eot_batch, train_mode

    def perturb(self, x, y):
        if self.train_mode:
            return self._perturb_delta(x, y)
        x_adv = x.clone()
        if self.random_start:
            x_adv = (x_adv + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp_(0, 1)
        for _ in range(self.steps):
            g, _ = eot_input_grad(self.model, x_adv, y, self.loss_fn, self.eot_iter, self.batched_eot, self.eot_batch)
            x_adv = x_adv + self.alpha * g.sign()
            x_adv = (x + (x_adv - x).clamp(-self.eps, self.eps)).clamp_(0, 1)
        return x_adv.detach()

    def _perturb_delta(self, x, y):
        """robust_overfitting's ``attack_pgd`` (restarts 1) in its order of operations, so that PGD-AT's batch is its
        batch bit for bit: the iterate is delta, clipped to the eps-ball and then to [-x, 1 - x] after every step;
        one more forward of ``x + delta`` (its restart selection); the training input ``clamp(x + delta, 0, 1)``."""
        delta = torch.empty_like(x).uniform_(-self.eps, self.eps) if self.random_start else torch.zeros_like(x)
        delta = torch.max(torch.min(delta, 1 - x), -x)
        for _ in range(self.steps):
            g, _ = eot_input_grad(self.model, x + delta, y, self.loss_fn, self.eot_iter, self.batched_eot,
                                  self.eot_batch)
            delta = (delta + self.alpha * g.sign()).clamp(-self.eps, self.eps)
            delta = torch.max(torch.min(delta, 1 - x), -x)
        with torch.no_grad():
            self.model(x + delta)
        return (x + delta).clamp(0, 1).detach()


def pgd_from(model, cfg, steps: int, alpha: float, **kwargs) -> PGD:
    """PGD with ``cfg``'s budget, EOT, speed options and mode."""
    return PGD(model, eps=cfg.eps, alpha=alpha, steps=steps, eot_iter=cfg.eot_iter, batched_eot=cfg.batched_eot,
               eot_batch=cfg.eot_batch, train_mode=cfg.train_mode, **kwargs)


@register_attack("PGD500", EPS, EOT_ITER, STEPS_SCALE, budget=Budget("eps", "linf"), gradient="white",
                 stronger_than=("PGD-uncorrected",))  # the corrected gradient is not weaker than the masked one
def pgd500(model, cfg):
    """The GSeM reference's PGD500: L-inf, step 2/255, 500 steps, random start, EOT, last iterate."""
    return pgd_from(model, cfg, scaled(500, cfg.steps_scale), 2 / 255)


@register_attack("PGD-uncorrected", EPS, EOT_ITER, STEPS_SCALE, budget=Budget("eps", "linf"), gradient="white")
def pgd500_uncorrected(model, cfg):
    """PGD500 with the masked gradient (GSeM's correction off): how much the correction matters."""
    return Uncorrected(model, pgd_from(model, cfg, scaled(500, cfg.steps_scale), 2 / 255))


PGD_STEPS = Knob("pgd_steps", positive_int, 10, "steps of the general PGD attack (and TRADES' KL attack)",
                 steps=True)
PGD_ALPHA = Knob("pgd_alpha", step_255, 2.0, "step of the general PGD attack (and TRADES' KL attack)", unit="1/255",
                 scale=1 / 255)


@register_attack("PGD", EPS, EOT_ITER, PGD_STEPS, PGD_ALPHA, budget=Budget("eps", "linf"),
                 gradient="white")
def pgd(model, cfg):
    """L-inf PGD with any number of steps and step size (default PGD-10, step 2/255), random start, EOT."""
    return pgd_from(model, cfg, cfg.pgd_steps, cfg.pgd_alpha)
