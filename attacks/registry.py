"""The one attack registry: ``name -> factory(model, cfg) -> (attack, settings)``, used by both evaluate scripts.

``cfg`` is an :class:`AttackConfig` (every knob of every attack, with its units, in one place); ``settings`` is the
dict of what the attack was run with, stored beside its result. To add an attack: write its class in a file of this
package and add one line to :data:`ATTACKS`.

Deformation attacks (FGR): ``flow`` (the authors' L-inf flow attack), ``stadv``, ``adef``.
Intensity attacks under the GSeM reference's names (corrected gradient, EOT over the GSeM noise, eval mode):
  PGD500    L-inf 8/255, step 2/255, 500 steps, random start, EOT, last iterate
  CW100     L2 Carlini-Wagner, 500 steps (sic), c 1, kappa 0, Adam lr 0.01, EOT, NO norm bound
  APGD500   APGD-CE, 500 steps, 50 restarts, EOT, rho 0.75 (pyautoattack's class)
  AA        APGD-CE (10 it.) -> APGD-T (10 it., 9 targets) -> FAB-T (10 it., 9 targets) -> Square (5000 queries,
            schedule rescaled to them as torchattacks' default); EOT for the gradient stages; each stage only on
            points still robust; every stage seeded with ``seed`` (the authors' stages used time-based seeds)
and extras: AA-standard / AA-rand (the library's AutoAttack), CWinf (100-step PGD on the CW margin loss, L-inf),
PGD-uncorrected (PGD500 with the masked gradient).
"""
from __future__ import annotations

from dataclasses import dataclass

from models import gradient_correction
from utils.flow import normalized_to_pixels

from .adef import ADef
from .autoattack_lib import LibraryAutoAttack, apgd, apgd_targeted, fab_targeted, square
from .base import Attack
from .cw import CWL2, cw_margin
from .flow import FlowAttack
from .multi import MultiAttack
from .pgd import PGD
from .stadv import StAdv


@dataclass
class AttackConfig:
    """Every attack hyperparameter, with its units. Each factory reads the fields it needs.

    ``steps_scale`` multiplies every attack's iterations, restarts and queries (at least 1 each).
    Intensity attacks: ``eps`` (L-inf budget in [0, 1] pixel units: 8/255), ``eot_iter`` (noisy passes per
    gradient),
    ``seed``, ``n_classes``, ``batched_eot`` / ``eot_batch`` / ``amp`` (speed: same expectation).
    Deformation attacks: ``flow_eps`` (L-inf flow budget, normalised align_corners=True units: 0.01 = 0.155 px at
    32 x 32), ``flow_steps``, ``image_size`` (px, to report budgets in pixels), stAdv's ``stadv_tau`` (where its
    search starts), ``stadv_steps`` (Adam iterations per round), ``stadv_search_steps``, ``stadv_lr`` (px) and
    ``stadv_init_std`` (px), ADef's ``adef_sigma`` (px), ``adef_overshoot``, ``adef_steps``, ``adef_candidates``,
    ``adef_max_norm`` (T-norm budget in px, None = none) and ``adef_variant`` (``official`` or ``improved``).
    """
    # every attack
    steps_scale: float = 1.0
    seed: int = 0
    n_classes: int = 10
    # intensity attacks
    eps: float = 8 / 255  # [0, 1] pixel units
    eot_iter: int = 1
    # speed, same expectation
    batched_eot: bool = True
    eot_batch: int | None = None
    amp: bool = False
    # the authors' flow attack
    flow_eps: float = 0.01  # normalised units: 0.155 px at 32 x 32
    flow_steps: int = 100
    image_size: int = 32  # px, to report budgets in pixels
    # stAdv
    stadv_tau: float = 0.05  # where the per-example search starts
    stadv_steps: int = 50
    stadv_search_steps: int = 4
    stadv_lr: float = 0.02  # px
    stadv_init_std: float = 0.0  # px
    # ADef
    adef_sigma: float = 0.5  # px
    adef_overshoot: float = 1.2
    adef_steps: int = 100
    adef_candidates: int = 9
    adef_max_norm: float | None = None  # px, None: no budget
    adef_variant: str = "official"  # or "improved"


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


def _pgd_kwargs(cfg):
    return dict(eot_iter=cfg.eot_iter, batched_eot=cfg.batched_eot, amp=cfg.amp, eot_batch=cfg.eot_batch)


def flow(model, cfg):
    steps = scaled(cfg.flow_steps, cfg.steps_scale)
    s = dict(eps=cfg.flow_eps, eps_pixels=normalized_to_pixels(cfg.flow_eps, cfg.image_size), steps=steps,
             step_size=cfg.flow_eps / steps, norm="Linf", units="normalised align_corners=True (1 px = 2/(W-1))")
    return FlowAttack(model, eps=cfg.flow_eps, steps=steps), s


def stadv(model, cfg):
    s = dict(tau=cfg.stadv_tau, steps=scaled(cfg.stadv_steps, cfg.steps_scale), search_steps=cfg.stadv_search_steps,
             lr=cfg.stadv_lr, init_std=cfg.stadv_init_std, kappa=0.0, targeted=False, budget=None, neighbours=4,
             optimizer="Adam per example, C&W-style search over tau")
    return StAdv(model, tau=cfg.stadv_tau, steps=s["steps"], search_steps=cfg.stadv_search_steps, lr=cfg.stadv_lr,
                 init_std=cfg.stadv_init_std), s


def adef(model, cfg):
    s = dict(sigma_pixels=cfg.adef_sigma, overshoot=cfg.adef_overshoot, steps=scaled(cfg.adef_steps, cfg.steps_scale),
             candidates=cfg.adef_candidates, max_tnorm_pixels=cfg.adef_max_norm, variant=cfg.adef_variant)
    return ADef(model, sigma=cfg.adef_sigma, overshoot=cfg.adef_overshoot, steps=s["steps"],
                candidates=cfg.adef_candidates, max_norm=cfg.adef_max_norm, variant=cfg.adef_variant), s


def pgd500(model, cfg, corrected=True):
    s = dict(norm="Linf", eps=cfg.eps, alpha=2 / 255, steps=scaled(500, cfg.steps_scale), random_start=True,
             eot_iter=cfg.eot_iter, corrected=corrected)
    attack = PGD(model, cfg.eps, 2 / 255, s["steps"], **_pgd_kwargs(cfg))
    return (attack if corrected else Uncorrected(model, attack)), s


def cw100(model, cfg):
    s = dict(norm="L2", eps=None, bounded=False, c=1.0, kappa=0.0, lr=0.01, steps=scaled(500, cfg.steps_scale),
             eot_iter=cfg.eot_iter, note="unbounded L2 Carlini-Wagner, 500 steps as the reference (named CW100 there)")
    return CWL2(model, c=1.0, kappa=0.0, steps=s["steps"], lr=0.01, eot_iter=cfg.eot_iter), s


def cw_inf(model, cfg):
    s = dict(norm="Linf", eps=cfg.eps, alpha=2 / 255, steps=scaled(100, cfg.steps_scale), random_start=True,
             eot_iter=cfg.eot_iter, loss="CW margin")
    return PGD(model, cfg.eps, 2 / 255, s["steps"], loss_fn=cw_margin, **_pgd_kwargs(cfg)), s


def apgd500(model, cfg):
    s = dict(norm="Linf", eps=cfg.eps, steps=scaled(500, cfg.steps_scale), restarts=scaled(50, cfg.steps_scale),
             eot_iter=cfg.eot_iter, rho=0.75, loss="ce", seed=cfg.seed)
    return apgd(model, eps=cfg.eps, steps=s["steps"], restarts=s["restarts"], eot_iter=cfg.eot_iter,
                seed=cfg.seed), s


def autoattack_reference(model, cfg):
    it, q, n_targets = scaled(10, cfg.steps_scale), scaled(5000, cfg.steps_scale), min(9, cfg.n_classes - 1)
    s = dict(norm="Linf", eps=cfg.eps, stages=["APGD-CE", "APGD-T", "FAB-T", "Square"], iterations=it, queries=q,
             square_resc_schedule=True, eot_iter=cfg.eot_iter, n_target_classes=n_targets, seed=cfg.seed)
    common = dict(eps=cfg.eps, steps=it, restarts=1, eot_iter=cfg.eot_iter, seed=cfg.seed)
    return MultiAttack(model, [
        ("APGD-CE", apgd(model, **common)),
        ("APGD-T", apgd_targeted(model, n_target_classes=n_targets, **common)),
        ("FAB-T", fab_targeted(model, n_target_classes=n_targets, **common)),
        ("Square", square(model, eps=cfg.eps, queries=q, restarts=1, seed=cfg.seed)),
    ]), s


def autoattack_library(version):
    def factory(model, cfg):
        s = dict(norm="Linf", eps=cfg.eps, version=version, eot_iter=cfg.eot_iter, steps_scale=cfg.steps_scale,
                 seed=cfg.seed, library="pyautoattack")
        return LibraryAutoAttack(model, version, eps=cfg.eps, eot_iter=cfg.eot_iter,
                                 scale=lambda n: scaled(n, cfg.steps_scale), seed=cfg.seed), s

    return factory


ATTACKS = {
    "flow": flow,
    "stadv": stadv,
    "adef": adef,
    "PGD500": pgd500,
    "CW100": cw100,
    "APGD500": apgd500,
    "AA": autoattack_reference,
    "AA-standard": autoattack_library("standard"),
    "AA-rand": autoattack_library("rand"),
    "CWinf": cw_inf,
    "PGD-uncorrected": lambda model, cfg: pgd500(model, cfg, corrected=False),
}


def list_attacks() -> list[str]:
    """Every registered attack name, in registry order."""
    return list(ATTACKS)


def build_attack(name: str, model, cfg: AttackConfig | None = None):
    """The attack called ``name`` on ``model`` with the settings of ``cfg`` (defaults: :class:`AttackConfig`).

    Returns:
        ``(attack, settings)``: a callable ``attack(x, y) -> x_adv`` and the dict of its settings (for the record).
    Raises:
        ValueError naming the valid attacks when ``name`` is unknown.
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
    return ATTACKS[name](model, cfg or AttackConfig())
