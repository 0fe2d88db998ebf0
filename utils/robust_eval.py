"""The GSeM evaluation suite (spec gsem.md §4): attack factories under the reference's names, the extra attacks,
and the sanity checks against gradient masking. Every gradient attack uses the corrected gradient (the GSeM modules'
default) and EOT over the GSeM noise; the model stays in eval mode; fp32 unless autocast is asked for.

Reference suite (names as printed by the reference):
  Clean    the test images
  PGD500   L-inf 8/255, step 2/255, 500 steps, random start, EOT 20, last iterate
  CW100    L2 Carlini-Wagner, 500 steps (sic), c 1, kappa 0, Adam lr 0.01, EOT 20, NO norm bound
  APGD500  APGD-CE, 500 steps, 50 restarts, EOT 20, rho 0.75 (pyautoattack's class)
  AA       APGD-CE (10 it.) -> APGD-T (10 it., 9 targets) -> FAB-T (10 it., 9 targets) -> Square (5000 queries);
           EOT 20 for the gradient stages; each stage only on points still robust
Extras: AA-standard (the library's standard AutoAttack, 100 iterations, APGD EOT from --att_eot_num), AA-rand,
CWinf (100-step PGD on the CW margin loss, L-inf 8/255), PGD-uncorrected (PGD500 with the masked gradient).
"""
from __future__ import annotations

import math

from attacks import PGD, Attack
from attacks.autoattack_lib import apgd, apgd_targeted, fab_targeted, square
from attacks.cw import CWL2, cw_margin
from attacks.multi import MultiAttack
from models import gradient_correction

REFERENCE_SUITE = ["Clean", "PGD500", "CW100", "APGD500", "AA"]
EXTRA_ATTACKS = ["AA-standard", "AA-rand", "CWinf", "PGD-uncorrected"]
ALL_ATTACKS = REFERENCE_SUITE + EXTRA_ATTACKS


def scaled(n: int, factor: float) -> int:
    """``--steps_scale``: iterations, restarts and queries multiplied by ``factor``, at least 1."""
    return max(1, int(round(n * factor)))


class Uncorrected(Attack):
    """Run an attack with every GSeM module's gradient correction off (the masked gradient)."""

    def __init__(self, model, attack):
        super().__init__(model)
        self.attack = attack

    def perturb(self, x, y):
        with gradient_correction(self.model, False):
            return self.attack(x, y)


class LibraryAutoAttack(Attack):
    """pyautoattack's ``AutoAttack`` (version 'standard' or 'rand'), run per batch."""

    def __init__(self, model, version, *, eps, eot_iter, scale, seed, device):
        super().__init__(model)
        from pyautoattack import AutoAttack

        self.aa = AutoAttack(model, version=version, eps=eps, norm="Linf", seed=seed, device=device)
        self.aa.verbose = False
        for a in (self.aa.apgd, self.aa.apgd_targeted):
            a.n_iter = scaled(a.n_iter, scale)
            a.n_restarts = scaled(a.n_restarts, scale)
            a.eot_iter = eot_iter
        self.aa.fab.n_iter = scaled(self.aa.fab.n_iter, scale)
        self.aa.fab.n_restarts = scaled(self.aa.fab.n_restarts, scale)
        self.aa.square.n_queries = scaled(self.aa.square.n_queries, scale)

    def perturb(self, x, y):
        x_adv, _ = self.aa.run_standard_evaluation(x, y, batch_size=x.shape[0])
        return x_adv.to(x.device)


def build_attack(name: str, model, *, eps=8 / 255, eot=20, scale=1.0, seed=0, n_classes=10, batched_eot=True,
                 amp=False, device="cpu", eot_batch=None):
    """The attack called ``name`` (see the module docstring) and a dict of its settings (for the JSON record).
    Returns ``(None, settings)`` for Clean."""
    n_targets = min(9, n_classes - 1)
    if name == "Clean":
        return None, {}
    if name in ("PGD500", "PGD-uncorrected"):
        s = dict(norm="Linf", eps=eps, alpha=2 / 255, steps=scaled(500, scale), random_start=True, eot_iter=eot,
                 corrected=name == "PGD500")
        atk = PGD(model, eps, 2 / 255, s["steps"], eot_iter=eot, batched_eot=batched_eot, amp=amp, eot_batch=eot_batch)
        return (atk if name == "PGD500" else Uncorrected(model, atk)), s
    if name == "CW100":
        s = dict(norm="L2", eps=None, bounded=False, c=1.0, kappa=0.0, lr=0.01, steps=scaled(500, scale),
                 eot_iter=eot, note="unbounded L2 Carlini-Wagner, 500 steps as the reference (named CW100 there)")
        return CWL2(model, c=1.0, kappa=0.0, steps=s["steps"], lr=0.01, eot_iter=eot), s
    if name == "CWinf":
        s = dict(norm="Linf", eps=eps, alpha=2 / 255, steps=scaled(100, scale), random_start=True, eot_iter=eot,
                 loss="CW margin")
        return PGD(model, eps, 2 / 255, s["steps"], eot_iter=eot, batched_eot=batched_eot, amp=amp,
                   loss_fn=cw_margin, eot_batch=eot_batch), s
    if name == "APGD500":
        s = dict(norm="Linf", eps=eps, steps=scaled(500, scale), restarts=scaled(50, scale), eot_iter=eot, rho=0.75,
                 loss="ce", seed=seed)
        return apgd(model, eps=eps, steps=s["steps"], restarts=s["restarts"], eot_iter=eot, seed=seed), s
    if name == "AA":
        it, q = scaled(10, scale), scaled(5000, scale)
        s = dict(norm="Linf", eps=eps, stages=["APGD-CE", "APGD-T", "FAB-T", "Square"], iterations=it, queries=q,
                 eot_iter=eot, n_target_classes=n_targets, seed=seed)
        stages = [
            ("APGD-CE", apgd(model, eps=eps, steps=it, restarts=1, eot_iter=eot, seed=seed)),
            ("APGD-T", apgd_targeted(model, eps=eps, steps=it, restarts=1, eot_iter=eot, seed=seed,
                                     n_target_classes=n_targets)),
            ("FAB-T", fab_targeted(model, eps=eps, steps=it, restarts=1, eot_iter=eot, seed=seed,
                                   n_target_classes=n_targets)),
            ("Square", square(model, eps=eps, queries=q, restarts=1, seed=seed)),
        ]
        return MultiAttack(model, stages), s
    if name in ("AA-standard", "AA-rand"):
        version = name.split("-")[1]
        s = dict(norm="Linf", eps=eps, version=version, eot_iter=eot, steps_scale=scale, seed=seed,
                 library="pyautoattack")
        return LibraryAutoAttack(model, version, eps=eps, eot_iter=eot, scale=scale, seed=seed, device=device), s
    raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ALL_ATTACKS)}")


def standard_error(acc_pct: float, n: int) -> float:
    """Binomial standard error of an accuracy in percent."""
    p = acc_pct / 100
    return 100 * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))
