"""Adapters around pyautoattack (the reference AutoAttack code, repackaged): APGD-CE, APGD-T, FAB-T, Square and the
library's whole AutoAttack are its classes, not rewritten. Each adapter is an :class:`attacks.Attack` (model in eval
mode, mode restored).
GSeM models give the corrected gradient to the library's autograd calls by themselves (the correction is inside the
module). FAB gets EOT through :class:`EOTFAB`, a small subclass that averages its logit differences and their input
gradients over ``eot_iter`` noisy passes (as the GSeM reference's AdaptiveFAB).
"""
from __future__ import annotations

import contextlib
import logging

import torch
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack

from utils.eot import eot_passes

from .base import Attack
from .multi import MultiAttack
from .registry import EOT_ITER, EPS, STEPS_SCALE, Budget, register_attack, scaled

LOGGER = logging.getLogger("auto-attack")


class EOTFAB(FABAttack_PT):
    """FAB (PyTorch) with EOT: logit differences and gradients averaged over ``eot_iter`` forward passes."""

    def __init__(self, *args, eot_iter: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.eot_iter = int(eot_iter)

    def _eot(self, fn, *args):
        dfs, dgs = zip(*(fn(*args) for _ in range(self.eot_iter)))
        return torch.stack(dfs).mean(0), torch.stack(dgs).mean(0)

    def get_diff_logits_grads_batch(self, imgs, la):
        return self._eot(super().get_diff_logits_grads_batch, imgs, la)

    def get_diff_logits_grads_batch_targeted(self, imgs, la, la_target):
        return self._eot(super().get_diff_logits_grads_batch_targeted, imgs, la, la_target)


class LibraryAttack(Attack):
    """Wrap a pyautoattack attack object (anything with ``perturb(x, y)``) as an :class:`Attack`. ``fp32``: run it
    outside the caller's autocast (Square writes the model's outputs into float32 buffers, which bf16 logits break;
    it takes no gradient, so bf16 would save little)."""

    def __init__(self, model, attack, fp32: bool = False):
        super().__init__(model)
        self.attack, self.fp32 = attack, fp32

    def perturb(self, x, y):
        self.attack.device = x.device
        with torch.autocast(x.device.type, enabled=False) if self.fp32 else contextlib.nullcontext():
            return self.attack.perturb(x, y).detach()

    def settings(self) -> dict:
        keys = ("norm", "eps", "n_iter", "n_restarts", "n_queries", "eot_iter", "rho", "seed", "loss",
                "n_target_classes", "p_init", "rescale_schedule")
        out = {k: v for k in keys if isinstance(v := getattr(self.attack, k, None), (int, float, str))}
        if isinstance(getattr(self.attack, "thr_decr", None), float):  # APGD keeps rho under this name
            out["rho"] = self.attack.thr_decr
        return out


def apgd(model, *, eps=8 / 255, steps=100, restarts=1, eot_iter=1, rho=0.75, seed=0, loss="ce"):
    """APGD (Croce & Hein, ICML 2020), L-inf, library class. Returns the first misclassifying iterate per point
    (judged by one forward), else the clean image."""
    return LibraryAttack(model, APGDAttack(model, n_iter=steps, norm="Linf", n_restarts=restarts, eps=eps, seed=seed,
                                           loss=loss, eot_iter=eot_iter, rho=rho, logger=LOGGER))


def apgd_targeted(model, *, eps=8 / 255, steps=100, restarts=1, eot_iter=1, rho=0.75, seed=0, n_target_classes=9):
    """APGD-T (DLR-targeted) over the ``n_target_classes`` most likely wrong classes, library class."""
    return LibraryAttack(model, APGDAttack_targeted(model, n_iter=steps, norm="Linf", n_restarts=restarts, eps=eps,
                                                    seed=seed, eot_iter=eot_iter, rho=rho,
                                                    n_target_classes=n_target_classes, logger=LOGGER))


def fab_targeted(model, *, eps=8 / 255, steps=100, restarts=1, eot_iter=1, seed=0, n_target_classes=9):
    """FAB-T (Croce & Hein, ICML 2020), L-inf, library class with EOT (alpha_max 0.1, eta 1.05, beta 0.9)."""
    return LibraryAttack(model, EOTFAB(model, norm="Linf", n_restarts=restarts, n_iter=steps, eps=eps, seed=seed,
                                       targeted=True, n_target_classes=n_target_classes, eot_iter=eot_iter))


def square(model, *, eps=8 / 255, queries=5000, restarts=1, seed=0, resc_schedule=True):
    """Square Attack (Andriushchenko et al., ECCV 2020), L-inf, gradient-free, library class (p_init 0.8).
    ``resc_schedule=True`` (the GSeM authors' torchattacks default) rescales the square-size schedule to the number of
    queries, so with 5,000 queries p halves twice as fast as AutoAttack's standard 10,000-query schedule."""
    return LibraryAttack(model, SquareAttack(model, norm="Linf", n_queries=queries, eps=eps, p_init=0.8,
                                             n_restarts=restarts, seed=seed, resc_schedule=resc_schedule), fp32=True)


class LibraryAutoAttack(Attack):
    """pyautoattack's ``AutoAttack`` (``version`` 'standard' or 'rand'), run per batch on the batch's device, with
    APGD's EOT set to ``eot_iter`` and every iteration, restart and query count mapped through ``scale(n)``."""

    def __init__(self, model, version: str, *, eps: float, eot_iter: int, scale=lambda n: n, seed: int = 0):
        super().__init__(model)
        self.version, self.eps, self.eot_iter, self.scale, self.seed = version, eps, eot_iter, scale, seed
        self._by_device = {}

    def _build(self, device):
        from pyautoattack import AutoAttack

        aa = AutoAttack(self.model, version=self.version, eps=self.eps, norm="Linf", seed=self.seed, device=device)
        aa.verbose = False
        for a in (aa.apgd, aa.apgd_targeted):
            a.n_iter, a.n_restarts, a.eot_iter = self.scale(a.n_iter), self.scale(a.n_restarts), self.eot_iter
        aa.fab.n_iter, aa.fab.n_restarts = self.scale(aa.fab.n_iter), self.scale(aa.fab.n_restarts)
        aa.square.n_queries = self.scale(aa.square.n_queries)
        return aa

    def perturb(self, x, y):
        if x.device not in self._by_device:
            self._by_device[x.device] = self._build(x.device)
        x_adv, _ = self._by_device[x.device].run_standard_evaluation(x, y, batch_size=x.shape[0])
        return x_adv.to(x.device)


@register_attack("APGD500", EPS, EOT_ITER, STEPS_SCALE, budget=Budget("eps", "linf"), gradient="white",
                 stronger_than=("PGD500",))
def apgd500(model, cfg):
    """The GSeM reference's APGD500: APGD-CE, 500 steps, 50 restarts, EOT, rho 0.75, seed (library class)."""
    return apgd(model, eps=cfg.eps, steps=scaled(500, cfg.steps_scale), restarts=scaled(50, cfg.steps_scale),
                eot_iter=eot_passes(model, cfg.eot_iter), seed=cfg.seed)


@register_attack("AA", EPS, EOT_ITER, STEPS_SCALE, budget=Budget("eps", "linf"), label="AA-10it", gradient="white",
                 stronger_than=("PGD500",))
def autoattack_reference(model, cfg):
    """AA as the GSeM reference ran it (10 iterations per stage, not AutoAttack's 100): APGD-CE -> APGD-T -> FAB-T ->
    Square (5000 queries, rescaled schedule), EOT, each stage on the points still robust."""
    it, q, n_targets = scaled(10, cfg.steps_scale), scaled(5000, cfg.steps_scale), min(9, cfg.n_classes - 1)
    common = dict(eps=cfg.eps, steps=it, restarts=1, eot_iter=eot_passes(model, cfg.eot_iter), seed=cfg.seed)
    return MultiAttack(model, [
        ("APGD-CE", apgd(model, **common)),
        ("APGD-T", apgd_targeted(model, n_target_classes=n_targets, **common)),
        ("FAB-T", fab_targeted(model, n_target_classes=n_targets, **common)),
        ("Square", square(model, eps=cfg.eps, queries=q, restarts=1, seed=cfg.seed)),
    ])


def _library_autoattack(version):
    def factory(model, cfg):
        return LibraryAutoAttack(model, version, eps=cfg.eps, eot_iter=eot_passes(model, cfg.eot_iter),
                                 scale=lambda n: scaled(n, cfg.steps_scale), seed=cfg.seed)

    factory.__doc__ = f"pyautoattack's AutoAttack version='{version}', APGD's EOT from eot_iter."
    return factory


register_attack("AA-standard", EPS, EOT_ITER, STEPS_SCALE, budget=Budget("eps", "linf"), gradient="white",
                stronger_than=("PGD500",))(
    _library_autoattack("standard"))
register_attack("AA-rand", EPS, EOT_ITER, STEPS_SCALE, budget=Budget("eps", "linf"), gradient="white",
                stronger_than=("PGD500",))(_library_autoattack("rand"))


@register_attack("Square", EPS, STEPS_SCALE, budget=Budget("eps", "linf"), gradient="black")
def square_autoattack(model, cfg):
    """Square Attack alone, as AutoAttack's standard version runs it: L-inf, 5000 queries, p_init 0.8, one restart,
    the 10,000-query schedule (resc_schedule False); gradient-free, so it sees through masked gradients."""
    return square(model, eps=cfg.eps, queries=scaled(5000, cfg.steps_scale), restarts=1, seed=cfg.seed,
                  resc_schedule=False)
